/*
 * neither.sys: \Device\Neither, reads with neither I/O: it writes to the caller's raw user address: right only because this runs in the caller's context (see sync.h).
 * Read it with: emu run --driver neither.sys devread '\Device\Neither'
 */
#define SYNC_NAME "neither.sys"
#define SYNC_DEVICE ((PCWSTR)u"\\Device\\Neither")
#define SYNC_FLAGS 0
#define SYNC_TARGET(Irp) ((char *)(Irp)->UserBuffer)
#include "sync.h"
