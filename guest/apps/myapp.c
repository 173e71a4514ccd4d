/*
 * myapp: the seed's MyApp.exe. The same three pages at the same address as
 * notepad, with its own markers "myapp page 0" .. "myapp page 2"
 * (three_pages.h).
 */
#include "three_pages.h"

int main(void)
{
    return three_pages("myapp");
}
