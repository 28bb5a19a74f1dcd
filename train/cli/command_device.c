/* See command_device.h. */
#include "command_device.h"

#include <stdio.h>
#include <string.h>

#include "comm.h"
#include "device.h"
#include "fatal.h"
#ifdef LDM_HAVE_CUDA
#include "ops_cuda.h"
#endif

/* This rank's answer, before the ranks agree. */
static int rank_on_cuda(const char *command, const char *type) {
    if (strcmp(type, "cpu") == 0) return 0;
    if (strcmp(type, "auto") == 0) return device_cuda_count() > 0;
    if (strcmp(type, "cuda") != 0)
        fatal_input("ldm %s: option --device: expected auto, cpu or cuda, got '%s'", command, type);
    if (!device_cuda_compiled())
        fatal_input("ldm %s: option --device: cuda: this build has no CUDA (cmake -DLDM_CUDA=ON)", command);
    if (device_cuda_count() == 0) {
        const char *error = device_cuda_error();
        fatal_input("ldm %s: option --device: cuda: %s", command, error ? error : "no CUDA device on this machine");
    }
    return 1;
}

int command_device_on_cuda(const char *command, const char *type) {
    if (!type) type = "auto";
    const int on_cuda = rank_on_cuda(command, type);
    if (comm_any(on_cuda) && comm_any(!on_cuda))
        fatal_input("ldm %s: option --device %s: some ranks have a GPU and others none; set --device to cpu or cuda",
                    command, type);
#ifdef LDM_HAVE_CUDA
    if (on_cuda) cuda_use_device_of_local_rank(comm_local_rank());
#endif
    return on_cuda;
}

void command_device_print(const char *command, int on_cuda) {
    if (comm_rank() != 0 || !on_cuda) return;
#ifdef LDM_HAVE_CUDA
    int count = device_cuda_count(), gpu = comm_local_rank() % count;
    char name[256];
    device_cuda_name(gpu, name, sizeof name);
    printf("%s: device: cuda (one GPU per rank; rank 0 on cuda:%d %s of %d on its host)\n", command, gpu, name, count);
    fflush(stdout);
#else
    (void)command;
#endif
}
