/* slowneither.sys: the slow device's driver with neither I/O (\Device\SlowNeither); see slow.h. */
#define SLOW_NAME "slowneither.sys"
#define SLOW_DEVICE ((PCWSTR)u"\\Device\\SlowNeither")
#define SLOW_FLAGS 0
#define SLOW_TARGET(Irp) ((char *)(Irp)->UserBuffer)
#include "slow.h"
