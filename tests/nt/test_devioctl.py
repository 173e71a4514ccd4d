"""devioctl, the generic I/O control client (guest/apps/devioctl.c): any control code to any
device, the input sent as a C string with its NUL, the bytes returned printed as they are."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
IOCTL = ROOT / "guest" / "build" / "drivers" / "ioctl.sys"
REVERSE_BUFFERED, REVERSE_NEITHER = 0x222000, 0x22200B


def run(machine_factory, apps, args, driver=IOCTL):
    m = machine_factory()
    if driver is not None:
        m.add_driver(driver)
    p = m.spawn(apps / "devioctl", args)
    m.run()
    return p


def test_the_input_goes_with_its_nul_and_the_output_shows_every_byte(machine_factory, apps):
    p = run(machine_factory, apps, ["\\Device\\Ioctl", hex(REVERSE_BUFFERED), "abc"])
    # ioctl.sys reverses the first min(input, output) bytes: "abc\0" comes back as "\0cba".
    assert p.output == b"status 0x00000000\nreturned 4 bytes\noutput: \\x00cba\n"
    assert p.exit_status == 0


def test_the_output_length_bounds_what_comes_back(machine_factory, apps):
    p = run(machine_factory, apps, ["\\Device\\Ioctl", str(REVERSE_NEITHER), "abcdef", "3"])
    assert p.output == b"status 0x00000000\nreturned 3 bytes\noutput: cba\n"


def test_a_code_the_driver_does_not_know_shows_its_status(machine_factory, apps):
    p = run(machine_factory, apps, ["\\Device\\Ioctl", "0x22FFFC"])
    assert p.output == b"status 0xc0000010\nreturned 0 bytes\noutput: \n"


def test_bad_arguments_say_why(machine_factory, apps):
    assert run(machine_factory, apps, ["\\Device\\Ioctl"], None).output == \
        b"usage: devioctl DEVICE CODE [INPUT [OUTLEN]]\n"
    p = run(machine_factory, apps, ["\\Device\\Ioctl", "1", "x", "257"], None)
    assert p.output == b"devioctl: OUTLEN 257 is over 256\n" and p.exit_status == 2
    p = run(machine_factory, apps, ["\\Device\\Nothing", "1"], None)
    assert p.output == b"open failed 0xc0000034\n" and p.exit_status == 1
