/*
 * The guest's tiny C library: console output, strings, number parsing and
 * exit. Nothing here allocates memory or keeps state besides the console
 * buffer, which is line buffered like stdout on a terminal: it is written
 * with NtWriteConsole at each '\n', when full, and by exit().
 */
#ifndef EMU_LIB_H
#define EMU_LIB_H

#include <stdarg.h>
#include <stddef.h>

#include <emu/syscall.h>

/* Let -Wformat check calls against the format string, as for the C library's printf. */
#define EMU_PRINTF_LIKE(fmt, args) __attribute__((format(printf, fmt, args)))

/*
 * printf family. Conversions: %d %i %u %x %X %p %s %c %%; length modifiers
 * l, ll, z; a width (digits or *), with flags '-' (left-justify) and '0'
 * (pad numbers with zeros). Each returns the number of characters produced;
 * snprintf/vsnprintf return the length the whole output would have had,
 * and always NUL-terminate when size > 0.
 */
int printf(const char *fmt, ...) EMU_PRINTF_LIKE(1, 2);
int vprintf(const char *fmt, va_list ap) EMU_PRINTF_LIKE(1, 0);
int snprintf(char *buf, size_t size, const char *fmt, ...) EMU_PRINTF_LIKE(3, 4);
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap) EMU_PRINTF_LIKE(3, 0);

/* Writes `s` and a newline; returns the number of characters written. */
int puts(const char *s);

/* Writes one character; returns it as an unsigned char converted to int. */
int putchar(int c);

/* Writes out whatever the console buffer holds; returns NtWriteConsole's status. */
NTSTATUS console_flush(void);

/* Flushes the console and ends the calling process with `status`. */
__attribute__((noreturn)) void exit(int status);

/* Strings and memory, with the C standard's contracts. */
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
char *strchr(const char *s, int c);
void *memcpy(void *dst, const void *src, size_t n);
void *memmove(void *dst, const void *src, size_t n);
void *memset(void *dst, int c, size_t n);
int memcmp(const void *a, const void *b, size_t n);

/*
 * Number parsing, as in the C standard: leading blanks, an optional sign,
 * and with base 0 a "0x" (hex) or "0" (octal) prefix. Out-of-range values
 * wrap instead of saturating (there is no errno to report them).
 */
long strtol(const char *s, char **end, int base);
unsigned long strtoul(const char *s, char **end, int base);
int atoi(const char *s);

/*
 * Exceptions: with a handler set, a fault in this process calls handler(record, context)
 * instead of ending the process. Return EXCEPTION_CONTINUE_EXECUTION to resume with the
 * (possibly edited) context, EXCEPTION_CONTINUE_SEARCH to let the process end with the
 * exception's code. 64-bit apps only.
 */
#define EXCEPTION_CONTINUE_EXECUTION (-1)
#define EXCEPTION_CONTINUE_SEARCH    0
typedef long (*exception_handler)(EXCEPTION_RECORD *record, CONTEXT *context);
void set_exception_handler(exception_handler handler);

#endif /* EMU_LIB_H */
