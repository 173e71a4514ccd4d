/*
 * printf and snprintf for the guest: a formatter that feeds characters to a
 * "sink", which is either a caller's buffer (snprintf) or the console
 * buffer (printf), flushed through NtWriteConsole at each newline, when
 * full, and by exit().
 *
 * Supported: %d %i %u %x %X %p %s %c %%, length modifiers l, ll, z,
 * a width (digits or *), flags '-' and '0'. An unknown conversion is
 * printed as written, so a mistake shows in the output.
 */
#include <stdint.h>

#include <emu/lib.h>

/* Where formatted characters go. */
struct sink {
    char *buf;
    size_t capacity;            /* characters buf can hold */
    size_t length;              /* characters now in buf */
    size_t total;               /* characters produced so far: what snprintf returns */
};

/* The console is a sink whose buffer is written out instead of dropping the excess. */
enum { CONSOLE_BUFFER_SIZE = 512 };
static char console_buffer[CONSOLE_BUFFER_SIZE];
static struct sink console = { console_buffer, CONSOLE_BUFFER_SIZE, 0, 0 };

/* One conversion specification, e.g. "%-08lx". */
struct spec {
    int left;                   /* '-': pad on the right */
    int zero;                   /* '0': pad numbers with zeros after the sign or "0x" */
    size_t width;               /* minimum number of characters */
    int wide;                   /* l, ll or z: a 64-bit argument (LP64: long, long long
                                 * and size_t are all 64 bits) */
    char conversion;            /* 'd', 'x', ...; '\0' if the format ended early */
};

NTSTATUS console_flush(void)
{
    NTSTATUS status = STATUS_SUCCESS;

    if (console.length > 0)
        status = NtWriteConsole(console.buf, console.length);
    console.length = 0;
    return status;
}

/* Appends one character; the console flushes when full and at the end of a line. */
static void put(struct sink *s, char c)
{
    s->total++;
    if (s == &console && s->length == s->capacity)
        console_flush();
    if (s->length < s->capacity)
        s->buf[s->length++] = c;
    if (s == &console && c == '\n')
        console_flush();
}

static void put_chars(struct sink *s, const char *chars, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put(s, chars[i]);
}

static void put_repeated(struct sink *s, char c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        put(s, c);
}

/*
 * Writes `prefix` then `body` (n characters), padded to the spec's width:
 * spaces on the left by default, on the right with '-', and for numbers
 * with '0', zeros between the prefix ("-", "0x") and the digits.
 */
static void put_field(struct sink *s, const struct spec *spec, const char *prefix,
                      const char *body, size_t n, int numeric)
{
    size_t prefix_length = strlen(prefix);
    size_t used = prefix_length + n;
    size_t pad = spec->width > used ? spec->width - used : 0;
    int zero_pad = numeric && spec->zero && !spec->left;

    if (!spec->left && !zero_pad)
        put_repeated(s, ' ', pad);
    put_chars(s, prefix, prefix_length);
    if (zero_pad)
        put_repeated(s, '0', pad);
    put_chars(s, body, n);
    if (spec->left)
        put_repeated(s, ' ', pad);
}

/* Writes `magnitude` in `base` after `prefix`; `upper` selects A-F over a-f. */
static void put_number(struct sink *s, const struct spec *spec, const char *prefix,
                       unsigned long long magnitude, unsigned base, int upper)
{
    const char *digits = upper ? "0123456789ABCDEF" : "0123456789abcdef";
    char buf[24];               /* 2^64 - 1 has 20 decimal digits */
    char *end = buf + sizeof buf;
    char *first = end;

    do {
        *--first = digits[magnitude % base];
        magnitude /= base;
    } while (magnitude != 0);
    put_field(s, spec, prefix, first, (size_t)(end - first), 1);
}

/* Writes a signed decimal; the magnitude of LLONG_MIN is computed without overflow. */
static void put_signed(struct sink *s, const struct spec *spec, long long value)
{
    if (value < 0)
        put_number(s, spec, "-", 0ULL - (unsigned long long)value, 10, 0);
    else
        put_number(s, spec, "", (unsigned long long)value, 10, 0);
}

static long long signed_arg(va_list *ap, const struct spec *spec)
{
    return spec->wide ? va_arg(*ap, long long) : va_arg(*ap, int);
}

static unsigned long long unsigned_arg(va_list *ap, const struct spec *spec)
{
    return spec->wide ? va_arg(*ap, unsigned long long) : va_arg(*ap, unsigned int);
}

static void put_string(struct sink *s, const struct spec *spec, const char *str)
{
    if (str == NULL)
        str = "(null)";
    put_field(s, spec, "", str, strlen(str), 0);
}

/* Reads the flags, width and length modifier after a '%'; returns what follows the conversion. */
static const char *parse_spec(const char *p, struct spec *spec, va_list *ap)
{
    *spec = (struct spec){ 0 };
    for (;; p++) {
        if (*p == '-')
            spec->left = 1;
        else if (*p == '0')
            spec->zero = 1;
        else
            break;
    }
    if (*p == '*') {
        int width = va_arg(*ap, int);

        spec->left |= width < 0;    /* C11 7.21.6.1p5: a negative * width means '-' */
        spec->width = width < 0 ? 0U - (unsigned)width : (unsigned)width;
        p++;
    }
    while (*p >= '0' && *p <= '9')
        spec->width = spec->width * 10 + (size_t)(*p++ - '0');
    while (*p == 'l' || *p == 'z') {
        spec->wide = 1;
        p++;
    }
    spec->conversion = *p;
    return *p != '\0' ? p + 1 : p;
}

/* Consumes the spec's argument (if any) and writes it. */
static void put_conversion(struct sink *s, const struct spec *spec, va_list *ap)
{
    char c;

    switch (spec->conversion) {
    case 'd':
    case 'i':
        put_signed(s, spec, signed_arg(ap, spec));
        break;
    case 'u':
        put_number(s, spec, "", unsigned_arg(ap, spec), 10, 0);
        break;
    case 'x':
    case 'X':
        put_number(s, spec, "", unsigned_arg(ap, spec), 16, spec->conversion == 'X');
        break;
    case 'p':
        put_number(s, spec, "0x", (uintptr_t)va_arg(*ap, void *), 16, 0);
        break;
    case 's':
        put_string(s, spec, va_arg(*ap, const char *));
        break;
    case 'c':
        c = (char)va_arg(*ap, int);
        put_field(s, spec, "", &c, 1, 0);
        break;
    case '%':
        put(s, '%');
        break;
    default:                    /* unknown, or the format ended after '%' */
        put(s, '%');
        if (spec->conversion != '\0')
            put(s, spec->conversion);
        break;
    }
}

/* The formatter behind every public routine. */
static void format(struct sink *s, const char *fmt, va_list ap)
{
    va_list args;               /* a copy, so helpers can take its address (va_list is an array) */
    struct spec spec;

    va_copy(args, ap);
    while (*fmt != '\0') {
        if (*fmt != '%') {
            put(s, *fmt++);
            continue;
        }
        fmt = parse_spec(fmt + 1, &spec, &args);
        put_conversion(s, &spec, &args);
    }
    va_end(args);
}

int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
    struct sink s = { buf, size > 0 ? size - 1 : 0, 0, 0 };     /* keep room for the NUL */

    format(&s, fmt, ap);
    if (size > 0)
        buf[s.length] = '\0';
    return (int)s.total;
}

int snprintf(char *buf, size_t size, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, size, fmt, ap);
    va_end(ap);
    return n;
}

int vprintf(const char *fmt, va_list ap)
{
    size_t before = console.total;

    format(&console, fmt, ap);
    return (int)(console.total - before);
}

int printf(const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vprintf(fmt, ap);
    va_end(ap);
    return n;
}

int puts(const char *s)
{
    size_t n = strlen(s);

    put_chars(&console, s, n);
    put(&console, '\n');
    return (int)n + 1;
}

int putchar(int c)
{
    put(&console, (char)c);
    return (unsigned char)c;
}
