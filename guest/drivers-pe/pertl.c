/*
 * pertl.sys: the C run-time routines and the Rtl string and memory routines
 * ntoskrnl exports, called through the import table (volatile operands keep
 * clang from computing them itself). Comparisons print -1, 0 or 1.
 *
 * The emulator should print
 *   pertl.sys: memcpy [hello] memmove [hehello] memset [xxxxo] memcmp -1 0 1
 *   pertl.sys: strlen 5 wcslen 4 strcmp -1 0 1 strncmp 0 -1 wcscmp 1 _stricmp 0 _wcsicmp 0 -1
 *   pertl.sys: strcpy [hello] strncpy abZ 000
 *   pertl.sys: _snprintf 10 [x=42 y=ff.] -1 [x=42 y] 6 x _vsnprintf 9 [v 7 seven]
 *   pertl.sys: ansi 5 6 [ansi!] string 3 4
 *   pertl.sys: copy [Hell] 8 [Hello] 10 null 0
 *   pertl.sys: equal 0 1 compare <0 >0 =0 <0
 *   pertl.sys: append 0x0 [Hello, world] 0xc0000023 24 [Hello, world!] 26
 *   pertl.sys: comparememory 3 8
 *   pertl.sys: a2u 0x0 [caf?] 8 10 e9 1 free 0 0 overflow 0x80000005 8
 */
#include <ntddk.h>
#include <stdarg.h>
#include <stdio.h>          /* _snprintf, _vsnprintf: ntoskrnl exports them */

static const char *volatile hello = "hello";
static const char *volatile abc = "abc";
static const char *volatile abd = "abd";
static const char *volatile ABC = "ABC";
static const WCHAR *volatile wide = L"wide";
static const WCHAR *volatile WIDE = L"WIDE";
static volatile SIZE_T five = 5, two = 2, four = 4, six = 6, eight = 8;

static int sign(int v) { return v < 0 ? -1 : v > 0 ? 1 : 0; }

static int vformat(char *buffer, size_t count, const char *format, ...)
{
    va_list args;
    int n;

    va_start(args, format);
    n = _vsnprintf(buffer, count, format, args);
    va_end(args);
    return n;
}

static void crt(void)
{
    char a[16], b[16], c[8];
    int fits, cut, exact;

    memcpy(a, hello, six);
    memcpy(b, hello, six);
    memmove(b + 2, b, five);
    b[7] = 0;
    memcpy(c, hello, six);
    memset(c, 'x', four);
    DbgPrint("pertl.sys: memcpy [%s] memmove [%s] memset [%s] memcmp %d %d %d\n", a, b, c,
             sign(memcmp(abc, abd, 3 * (SIZE_T)(five != 0))), sign(memcmp(abc, abd, two)),
             sign(memcmp(abd, abc, 3 * (SIZE_T)(five != 0))));

    DbgPrint("pertl.sys: strlen %d wcslen %d strcmp %d %d %d strncmp %d %d wcscmp %d "
             "_stricmp %d _wcsicmp %d %d\n",
             (int)strlen(hello), (int)wcslen(wide), sign(strcmp(abc, abd)),
             sign(strcmp(abc, abc)), sign(strcmp(abd, abc)), sign(strncmp(abc, abd, two)),
             sign(strncmp(abc, abd, six)), sign(wcscmp(wide, WIDE)), sign(_stricmp(abc, ABC)),
             sign(_wcsicmp(wide, WIDE)), sign(_wcsicmp(WIDE, L"wider")));

    strcpy(a, hello);
    memset(b, 'Z', eight);
    strncpy(b, abc, two);                       /* "ab", no NUL: two < 4 */
    strncpy(c, abc, six);                       /* "abc" and three NULs */
    DbgPrint("pertl.sys: strcpy [%s] strncpy %c%c%c %d%d%d\n", a, b[0], b[1], b[2], c[3], c[4],
             c[5]);

    fits = _snprintf(a, sizeof(a), "x=%d y=%x.", 42, 255);
    DbgPrint("pertl.sys: _snprintf %d [%s]", fits, a);
    memset(b, 'Z', eight);
    cut = _snprintf(b, six, "x=%d y=%x.", 42, 255);
    b[six] = 0;
    exact = _snprintf(c, six, "%s", "sixsix");
    DbgPrint(" %d [%s] %d %c", cut, b, exact, c[5]);
    fits = vformat(a, sizeof(a), "v %d %s", 7, "seven");
    DbgPrint(" _vsnprintf %d [%s]\n", fits, a);
}

static void strings(void)
{
    ANSI_STRING ansi;
    STRING string;
    UNICODE_STRING hello_world, small, big, tail, upper, lower, converted;
    WCHAR small_buffer[4], big_buffer[16], append_buffer[13];
    NTSTATUS first, second;
    USHORT length_after;
    static UCHAR one[] = {1, 2, 3, 4}, other[] = {1, 2, 3, 5};

    RtlInitAnsiString(&ansi, "ansi!");
    RtlInitString(&string, "str");
    DbgPrint("pertl.sys: ansi %d %d [%Z] string %d %d\n", ansi.Length, ansi.MaximumLength,
             &ansi, string.Length, string.MaximumLength);

    RtlInitUnicodeString(&hello_world, L"Hello");
    small.Buffer = small_buffer; small.Length = 0; small.MaximumLength = sizeof(small_buffer);
    big.Buffer = big_buffer; big.Length = 0; big.MaximumLength = sizeof(big_buffer);
    RtlCopyUnicodeString(&small, &hello_world);
    RtlCopyUnicodeString(&big, &hello_world);
    DbgPrint("pertl.sys: copy [%wZ] %d [%ws] %d", &small, small.Length, big_buffer, big.Length);
    RtlCopyUnicodeString(&big, NULL);
    DbgPrint(" null %d\n", big.Length);

    RtlInitUnicodeString(&upper, L"HELLO");
    RtlInitUnicodeString(&lower, L"hello");
    DbgPrint("pertl.sys: equal %d %d compare %s %s %s %s\n",
             RtlEqualUnicodeString(&upper, &lower, FALSE),
             RtlEqualUnicodeString(&upper, &lower, TRUE),
             RtlCompareUnicodeString(&upper, &lower, FALSE) < 0 ? "<0" : ">=0",
             RtlCompareUnicodeString(&lower, &upper, FALSE) > 0 ? ">0" : "<=0",
             RtlCompareUnicodeString(&lower, &upper, TRUE) == 0 ? "=0" : "!=0",
             RtlCompareUnicodeString(&hello_world, &lower, FALSE) < 0 ? "<0" : ">=0");

    big.Buffer = append_buffer; big.Length = 0; big.MaximumLength = sizeof(append_buffer);
    RtlCopyUnicodeString(&big, &hello_world);
    first = RtlAppendUnicodeToString(&big, L", world");
    DbgPrint("pertl.sys: append 0x%x [%wZ]", first, &big);
    RtlInitUnicodeString(&tail, L"!!");
    second = RtlAppendUnicodeStringToString(&big, &tail);
    length_after = big.Length;
    tail.Length = 2;
    first = RtlAppendUnicodeStringToString(&big, &tail);
    DbgPrint(" 0x%x %d [%wZ] %d\n", second, length_after, &big, big.Length);
    (void)first;

    DbgPrint("pertl.sys: comparememory %d %d\n", (int)RtlCompareMemory(one, other, four),
             (int)RtlCompareMemory(hello, hello, eight));

    RtlInitAnsiString(&ansi, "caf\xe9");
    first = RtlAnsiStringToUnicodeString(&converted, &ansi, TRUE);
    DbgPrint("pertl.sys: a2u 0x%x [%wZ] %d %d e9 %d", first, &converted, converted.Length,
             converted.MaximumLength, converted.Buffer[3] == 0xE9);
    RtlFreeUnicodeString(&converted);
    DbgPrint(" free %d %d", converted.Length, converted.Buffer == NULL ? 0 : 1);
    small.Length = 0;
    small.MaximumLength = 8;                    /* room for 4 characters, not the NUL */
    first = RtlAnsiStringToUnicodeString(&small, &ansi, FALSE);
    DbgPrint(" overflow 0x%x %d\n", first, small.Length);
}

NTSTATUS DriverEntry(PDRIVER_OBJECT DriverObject, PUNICODE_STRING RegistryPath)
{
    UNREFERENCED_PARAMETER(DriverObject);
    UNREFERENCED_PARAMETER(RegistryPath);
    crt();
    strings();
    return STATUS_SUCCESS;
}
