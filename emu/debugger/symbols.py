"""Symbols: names for addresses and addresses for names, from the loaded images' ELF symbols.

Names follow WinDbg: ``module!symbol`` (``hello!main``, ``echo.sys!DispatchRead``, a
driver also as ``echo!DispatchRead``), ``module!symbol+0x12`` for an address inside a
function, ``module+0x1234`` where no symbol precedes it. Two modules have no ELF file:
``nt`` (the kernel exports drivers call, each a trap address) and ``ntdll`` (the system
code page every process gets, emu.nt.ps).
"""

from __future__ import annotations

import bisect
import difflib
from collections.abc import Iterable

from emu.debugger.records import ImageInfo, TargetError
from emu.nt import exports, ntos, ps  # noqa: F401 (ntos registers the exports)

NTDLL = ImageInfo("ntdll", "system", None, ps.USER_STUB_PAGE, ps.USER_STUB_PAGE + 0x1000,
                  symbols={"RtlUserThreadExit": ps.USER_STUB_PAGE,
                           "RtlUserThreadExit32": ps.USER_STUB_PAGE + ps.STUB_32_OFFSET})


def module_names(image: ImageInfo) -> tuple[str, ...]:
    """The names ``module!`` may use for ``image`` (a driver with or without ``.sys``)."""
    names = [image.name.lower()]
    if image.kind == "driver" and "." in image.name:
        names.append(image.name.rsplit(".", 1)[0].lower())
    return tuple(names)


def containing(images: Iterable[ImageInfo], address: int) -> ImageInfo | None:
    """The first image whose range holds ``address``."""
    for image in images:
        if image.base <= address < image.end and not image.unloaded:
            return image
    return None


def nearest(image: ImageInfo, address: int) -> tuple[str, int] | None:
    """(symbol, its address) of the last symbol of ``image`` at or below ``address``; among
    aliases the first name in sorted order."""
    table = sorted((value, name) for name, value in image.symbols.items()
                   if image.base <= value <= address)
    if not table:
        return None
    value = table[-1][0]
    first = bisect.bisect_left(table, (value, ""))
    return table[first][1], value


def label(image: ImageInfo, address: int) -> str:
    """``hello!main+0x12``, ``hello!main`` at the symbol itself, ``hello+0x12`` without one."""
    found = nearest(image, address)
    if found is None:
        return f"{image.name}+0x{address - image.base:x}"
    name, value = found
    return f"{image.name}!{name}" + (f"+0x{address - value:x}" if address != value else "")


def export_label(address: int) -> str | None:
    """``nt!DbgPrint`` for the trap address of a kernel export, else None."""
    name = exports.name_at(address)
    return None if name is None else f"nt!{name}"


def lookup(name: str, images: list[ImageInfo], preferred: list[ImageInfo]) -> int:
    """The address of ``module!symbol`` or a bare ``symbol`` (``preferred`` images first, then
    the others in order); TargetError with the nearest known name when there is none."""
    if "!" in name:
        module, _, symbol = name.partition("!")
        return _in_module(module, symbol, name, images)
    for image in [*preferred, *images]:
        if name in image.symbols and not image.unloaded:
            return image.symbols[name]
    gone = next((i for i in [*preferred, *images] if name in i.symbols), None)
    if gone is not None:
        raise TargetError(_unloaded(name, gone))
    loaded = [i for i in images if not i.unloaded]
    raise TargetError(f"no symbol '{name}'" + _suggest(name, loaded))


def _unloaded(name: str, image: ImageInfo) -> str:
    """Why a symbol of an image that is gone has no address now."""
    if image.kind == "driver":
        return f"'{name}' is a symbol of {image.name}, which has been unloaded"
    return (f"'{name}' is a symbol of {image.name}, whose process has ended: its address "
            "space is gone")


def _in_module(module: str, symbol: str, text: str, images: list[ImageInfo]) -> int:
    if module.lower() == "nt":
        address = exports.address_of(symbol)
        if address is None:
            raise TargetError(f"no kernel export '{symbol}'" +
                              _suggest_from(symbol, sorted(exports.EXPORTS), "nt!"))
        return address
    matches = [i for i in images if module.lower() in module_names(i)]
    if not matches:
        known = sorted({i.name for i in images})
        hint = difflib.get_close_matches(module, known, n=1)
        raise TargetError(f"no module '{module}'" +
                          (f" (did you mean '{hint[0]}'?)" if hint else
                           f" (loaded: {', '.join(known) or 'none'})"))
    for image in matches:
        if symbol in image.symbols and not image.unloaded:
            return image.symbols[symbol]
    gone = next((i for i in matches if symbol in i.symbols), None)
    if gone is not None:
        raise TargetError(_unloaded(text, gone))
    names = sorted({n for i in matches for n in i.symbols})
    raise TargetError(f"no symbol '{text}'" +
                      _suggest_from(symbol, names, f"{matches[0].name}!"))


def _suggest(name: str, images: list[ImageInfo]) -> str:
    return _suggest_from(name, sorted({n for i in images for n in i.symbols}), "")


def _suggest_from(name: str, names: list[str], prefix: str) -> str:
    hint = difflib.get_close_matches(name, names, n=1)
    return f" (did you mean '{prefix}{hint[0]}'?)" if hint else ""
