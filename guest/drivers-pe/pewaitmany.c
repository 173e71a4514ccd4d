/*
 * pewaitmany.sys: KeWaitForMultipleObjects on four events with no
 * WaitBlockArray: a thread has THREAD_WAIT_OBJECTS (3) wait blocks of its own,
 * so more need the caller's array: bug check 0xC MAXIMUM_WAIT_OBJECTS_EXCEEDED.
 */
#include <ntddk.h>

static KEVENT events[4];

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    PVOID objects[4];

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    for (int i = 0; i < 4; i++) {
        KeInitializeEvent(&events[i], NotificationEvent, TRUE);
        objects[i] = &events[i];
    }
    DbgPrint("pewaitmany.sys: waiting on 4 objects without a WaitBlockArray\n");
    KeWaitForMultipleObjects(4, objects, WaitAny, Executive, KernelMode, FALSE, NULL, NULL);
    DbgPrint("pewaitmany.sys: waited?!\n");
    return STATUS_SUCCESS;
}
