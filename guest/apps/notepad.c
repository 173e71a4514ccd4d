/*
 * notepad: the seed's Notepad.exe. Commits three pages at 0x7F7'93950000,
 * writes "notepad page 0" .. "notepad page 2" into them and reads them back
 * (three_pages.h). Run it together with myapp: each sees only its own.
 */
#include "three_pages.h"

int main(void)
{
    return three_pages("notepad");
}
