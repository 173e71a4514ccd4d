/* slowbuffered.sys: the slow device's driver with buffered I/O (\Device\SlowBuffered); see slow.h. */
#define SLOW_NAME "slowbuffered.sys"
#define SLOW_DEVICE ((PCWSTR)u"\\Device\\SlowBuffered")
#define SLOW_FLAGS DO_BUFFERED_IO
#define SLOW_TARGET(Irp) ((char *)(Irp)->AssociatedIrp.SystemBuffer)
#include "slow.h"
