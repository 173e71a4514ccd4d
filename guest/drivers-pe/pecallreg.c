/*
 * pecallreg.sys: DriverEntry calls KeBugCheckEx(0xE2, 1, 2, 3, 4) through r12
 * (`call r12`, 41 FF D4: its last two bytes read alone are `call rsp`). The bug
 * check names the call that made it: RIP is the `call r12`, three bytes before the
 * return address.
 */
#include <ntddk.h>

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    void *routine = (void *)KeBugCheckEx;

    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    __asm__ volatile("sub $40, %%rsp\n\t"
                     "mov $0xE2, %%ecx\n\t"
                     "mov $1, %%edx\n\t"
                     "mov $2, %%r8d\n\t"
                     "mov $3, %%r9d\n\t"
                     "movq $4, 32(%%rsp)\n\t"
                     "mov %0, %%r12\n\t"
                     "call *%%r12\n\t"
                     "add $40, %%rsp"
                     :: "r"(routine) : "r12", "rcx", "rdx", "r8", "r9", "r10", "r11", "rax",
                       "memory");
    return STATUS_SUCCESS;
}
