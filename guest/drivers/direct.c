/*
 * direct.sys: \Device\Direct, reads with direct I/O: it writes into the caller's frames, mapped at a kernel address through the MDL (see sync.h).
 * Read it with: emu run --driver direct.sys devread '\Device\Direct'
 */
#define SYNC_NAME "direct.sys"
#define SYNC_DEVICE ((PCWSTR)u"\\Device\\Direct")
#define SYNC_FLAGS DO_DIRECT_IO
#define SYNC_TARGET(Irp) ((char *)MmGetSystemAddressForMdlSafe((Irp)->MdlAddress, 0))
#include "sync.h"
