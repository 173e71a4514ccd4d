/* slowdirect.sys: the slow device's driver with direct I/O (\Device\SlowDirect); see slow.h. */
#define SLOW_NAME "slowdirect.sys"
#define SLOW_DEVICE ((PCWSTR)u"\\Device\\SlowDirect")
#define SLOW_FLAGS DO_DIRECT_IO
#define SLOW_TARGET(Irp) ((char *)MmGetSystemAddressForMdlSafe((Irp)->MdlAddress, 0))
#include "slow.h"
