/*
 * buffered.sys: \Device\Buffered, reads with buffered I/O: it writes into the system buffer in pool (the I/O manager copies it to the caller) (see sync.h).
 * Read it with: emu run --driver buffered.sys devread '\Device\Buffered'
 */
#define SYNC_NAME "buffered.sys"
#define SYNC_DEVICE ((PCWSTR)u"\\Device\\Buffered")
#define SYNC_FLAGS DO_BUFFERED_IO
#define SYNC_TARGET(Irp) ((char *)(Irp)->AssociatedIrp.SystemBuffer)
#include "sync.h"
