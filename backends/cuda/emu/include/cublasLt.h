/* cublasLt.h - shim of the host emulation (cuda/emu/cuda_emu.h) */
#include "../cuda_emu.h"
