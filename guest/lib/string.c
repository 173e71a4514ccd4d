/*
 * Strings, memory and number parsing, with the C standard's contracts.
 *
 * gcc may emit calls to memcpy, memmove, memset and memcmp even in
 * freestanding code (for struct copies and zeroing, GCC manual "C Dialect
 * Options", -ffreestanding), so every app links these. The Makefile builds
 * this file with -fno-tree-loop-distribute-patterns, or gcc would turn the
 * loops below into calls to themselves.
 */
#include <emu/lib.h>

size_t strlen(const char *s)
{
    size_t n = 0;

    while (s[n] != '\0')
        n++;
    return n;
}

int strcmp(const char *a, const char *b)
{
    while (*a != '\0' && *a == *b) {
        a++;
        b++;
    }
    return (unsigned char)*a - (unsigned char)*b;
}

int strncmp(const char *a, const char *b, size_t n)
{
    for (; n > 0; n--, a++, b++) {
        if (*a != *b || *a == '\0')
            return (unsigned char)*a - (unsigned char)*b;
    }
    return 0;
}

char *strchr(const char *s, int c)
{
    for (;; s++) {
        if (*s == (char)c)
            return (char *)s;
        if (*s == '\0')
            return NULL;
    }
}

void *memcpy(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    while (n-- > 0)
        *d++ = *s++;
    return dst;
}

/* Like memcpy, but the areas may overlap: copy backwards when dst is above src. */
void *memmove(void *dst, const void *src, size_t n)
{
    unsigned char *d = dst;
    const unsigned char *s = src;

    if (d <= s || d >= s + n)
        return memcpy(dst, src, n);
    while (n-- > 0)
        d[n] = s[n];
    return dst;
}

void *memset(void *dst, int c, size_t n)
{
    unsigned char *d = dst;

    while (n-- > 0)
        *d++ = (unsigned char)c;
    return dst;
}

int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *x = a;
    const unsigned char *y = b;

    for (; n > 0; n--, x++, y++) {
        if (*x != *y)
            return *x - *y;
    }
    return 0;
}

/* The value of digit character c in bases up to 36, or 36 if it is not a digit. */
static unsigned digit_value(char c)
{
    if (c >= '0' && c <= '9')
        return (unsigned)(c - '0');
    if (c >= 'a' && c <= 'z')
        return (unsigned)(c - 'a' + 10);
    if (c >= 'A' && c <= 'Z')
        return (unsigned)(c - 'A' + 10);
    return 36;
}

/* Skips a "0x"/"0" prefix as *base allows (and picks the base when it is 0). */
static const char *parse_prefix(const char *s, int *base)
{
    int hex_prefix = s[0] == '0' && (s[1] == 'x' || s[1] == 'X') && digit_value(s[2]) < 16;

    if ((*base == 0 || *base == 16) && hex_prefix) {
        *base = 16;
        return s + 2;
    }
    if (*base == 0)
        *base = s[0] == '0' ? 8 : 10;
    return s;
}

/*
 * strtoul, as in C11 7.22.1.4 but without range checks: a value past
 * ULONG_MAX wraps. *end (if end is not NULL) points past the last digit
 * used, or to s when there was no number.
 */
unsigned long strtoul(const char *s, char **end, int base)
{
    const char *p = s;
    const char *digits;
    unsigned long value = 0;
    int negative = 0;

    while (*p == ' ' || (*p >= '\t' && *p <= '\r'))
        p++;
    if (*p == '+' || *p == '-')
        negative = *p++ == '-';
    digits = p = parse_prefix(p, &base);
    for (; digit_value(*p) < (unsigned)base; p++)
        value = value * (unsigned)base + digit_value(*p);
    if (end != NULL)
        *end = (char *)(p == digits ? s : p);
    return negative ? 0UL - value : value;
}

/* strtol: strtoul's digits read as a two's complement value. */
long strtol(const char *s, char **end, int base)
{
    return (long)strtoul(s, end, base);
}

int atoi(const char *s)
{
    return (int)strtol(s, NULL, 10);
}
