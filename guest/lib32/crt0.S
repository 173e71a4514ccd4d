/*
 * crt0 for 32-bit apps (i386, compatibility mode under long mode).
 *
 * The executive builds the i386 System V initial stack: esp -> argc, then
 * argc 4-byte argv pointers, NULL, envp..., NULL, auxv. main is called with
 * the cdecl convention (arguments pushed right to left).
 */
    .intel_syntax noprefix
    .text
    .globl _start
    .type _start, @function
_start:
    xor ebp, ebp                    /* ebp = 0 ends the frame-pointer chain */
    mov eax, [esp]                  /* argc */
    lea ecx, [esp + 4]              /* argv */
    lea edx, [ecx + eax * 4 + 4]    /* envp, just past argv's NULL */
    and esp, -16
    sub esp, 4                      /* keep esp 16-byte aligned at the call */
    push edx
    push ecx
    push eax
    call main
    push eax                        /* main's result is the exit status */
    call exit
    ud2
    .size _start, . - _start

    .section .note.GNU-stack, "", @progbits
