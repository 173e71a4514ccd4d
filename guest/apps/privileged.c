/*
 * privileged: executes one instruction reserved to ring 0, chosen by
 * argv[1] (default cli). At CPL 3 each raises #GP(0) (Intel SDM Vol. 3A
 * 5.9, "Privileged Instructions"; cli, sti, in and out because IOPL is 0
 * and there is no I/O permission bitmap), which the executive reports as
 * STATUS_PRIVILEGED_INSTRUCTION (0xC0000096).
 */
#include <stdint.h>

#include <emu/lib.h>

#define COM1_PORT 0x3F8         /* the first serial port's data register */
#define IA32_SYSENTER_CS 0x174  /* an MSR 64-bit code never uses: writing it is harmless */

/* lgdt's memory operand: a 16-bit limit and a 64-bit base (Intel SDM Vol. 3A 2.4.1). */
struct __attribute__((packed)) descriptor_table {
    uint16_t limit;
    uint64_t base;
};

static void do_cli(void) { __asm__ volatile("cli"); }
static void do_sti(void) { __asm__ volatile("sti"); }
static void do_hlt(void) { __asm__ volatile("hlt"); }

static void do_mov_cr3(void)
{
    __asm__ volatile("mov %0, %%cr3" : : "r"(0UL) : "memory");
}

/* CR8, the task priority (Windows' IRQL on x64): ring 0 only, either way (SDM Vol. 2B, MOV). */
static void do_mov_cr8(void)
{
    __asm__ volatile("mov %0, %%cr8" : : "r"(15UL) : "memory");
}

static void do_read_cr8(void)
{
    uint64_t value;

    __asm__ volatile("mov %%cr8, %0" : "=r"(value));
}

/* Had the CPL check been forgotten, this write would change nothing and "succeeded?!" shows it. */
static void do_wrmsr(void)
{
    __asm__ volatile("wrmsr" : : "c"(IA32_SYSENTER_CS), "a"(0), "d"(0));
}

static void do_in(void)
{
    uint8_t value;

    __asm__ volatile("in %%dx, %%al" : "=a"(value) : "d"(COM1_PORT));
}

static void do_out(void)
{
    __asm__ volatile("out %%al, %%dx" : : "a"('!'), "d"(COM1_PORT));
}

static void do_lgdt(void)
{
    static const struct descriptor_table empty_gdt = { 0, 0 };

    __asm__ volatile("lgdt %0" : : "m"(empty_gdt));
}

static void do_invlpg(void)
{
    __asm__ volatile("invlpg (%0)" : : "r"(0UL) : "memory");
}

struct privileged_instruction {
    const char *name;
    void (*execute)(void);
};

static const struct privileged_instruction instructions[] = {
    { "cli", do_cli },
    { "sti", do_sti },
    { "hlt", do_hlt },
    { "mov-cr3", do_mov_cr3 },
    { "mov-cr8", do_mov_cr8 },
    { "read-cr8", do_read_cr8 },
    { "wrmsr", do_wrmsr },
    { "in", do_in },
    { "out", do_out },
    { "lgdt", do_lgdt },
    { "invlpg", do_invlpg },
};

#define INSTRUCTION_COUNT (sizeof instructions / sizeof instructions[0])

static const struct privileged_instruction *find_instruction(const char *name)
{
    for (size_t i = 0; i < INSTRUCTION_COUNT; i++) {
        if (strcmp(instructions[i].name, name) == 0)
            return &instructions[i];
    }
    return NULL;
}

static int usage(void)
{
    printf("usage: privileged [");
    for (size_t i = 0; i < INSTRUCTION_COUNT; i++)
        printf("%s%s", i > 0 ? "|" : "", instructions[i].name);
    printf("]\n");
    return 2;
}

int main(int argc, char **argv)
{
    const char *name = argc > 1 ? argv[1] : "cli";
    const struct privileged_instruction *insn = find_instruction(name);

    if (insn == NULL)
        return usage();
    printf("executing %s at ring 3\n", insn->name);
    insn->execute();
    printf("%s succeeded?!\n", insn->name);
    return 1;
}
