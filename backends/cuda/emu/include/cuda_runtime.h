/* cuda_runtime.h - shim of the host emulation (backends/cuda/emu/cuda_emu.h) */
#include "../cuda_emu.h"
