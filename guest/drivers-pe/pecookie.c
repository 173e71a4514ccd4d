/*
 * pecookie.sys: a driver with a load configuration directory that names its
 * __security_cookie (what MSVC's /GS code links with). The linker makes
 * _load_config_used the image's IMAGE_DIRECTORY_ENTRY_LOAD_CONFIG; the loader
 * must replace the cookie's default value before DriverEntry runs.
 *
 * The emulator should print
 *   pecookie.sys: cookie replaced
 * and the cookie's value (neither the default nor 0, top 16 bits clear).
 */
#include <ntddk.h>
#include <ntimage.h>

#define DEFAULT_SECURITY_COOKIE 0x00002B992DDFA232ULL

ULONG_PTR __security_cookie = DEFAULT_SECURITY_COOKIE;

__attribute__((used)) const IMAGE_LOAD_CONFIG_DIRECTORY64 _load_config_used = {
    .Size = sizeof(IMAGE_LOAD_CONFIG_DIRECTORY64),
    .SecurityCookie = (ULONGLONG)&__security_cookie,
};

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);

    DbgPrint("pecookie.sys: cookie %s %I64x\n",
             __security_cookie == DEFAULT_SECURITY_COOKIE ? "not replaced" : "replaced",
             (ULONGLONG)__security_cookie);
    return STATUS_SUCCESS;
}
