/* The CUDA toolchain and runtime: the SiLU kernel against the CPU op. Reports
 * itself skipped (exit 77) in a CPU build or on a machine without a GPU. */
#include <stdio.h>

#include "device.h"
#include "ops.h"
#include "rng.h"
#include "test_util.h"

int main(void) {
    TEST_SKIP_WITHOUT_CUDA("test_device");
#ifdef LDM_HAVE_CUDA
    enum { N = 100003 }; /* not a multiple of the block size */
    static float in[N], cpu[N], gpu[N];
    rng_stream rng = rng_stream_for(1, 2, 3);
    for (int i = 0; i < N; i++) in[i] = 8.0f * rng_normal(&rng);
    silu_forward(cpu, in, N);
    CHECK(device_cuda_silu(gpu, in, N) == 0);
    /* expf on the GPU differs from glibc's by a few ulp */
    for (int i = 0; i < N; i++) CHECK_CLOSE(gpu[i], cpu[i], 1e-6, 1e-5);
#endif
    return test_finish("test_device");
}
