/* The device of the commands that run a trained model (ldm sample, encode,
 * decode): their --device auto|cpu|cuda, resolved as device.type is for
 * training (train_command.c): auto is cuda where this build and the rank's
 * machine have a GPU; cuda that cannot be had is refused with one line before
 * any work; ranks that would disagree are refused (their outputs would differ
 * by the devices' rounding). On cuda each rank takes GPU comm_local_rank() %
 * the GPUs of its host (ranks may share one: these commands use no NCCL). */
#ifndef LDM_COMMAND_DEVICE_H
#define LDM_COMMAND_DEVICE_H

/* Collective: 1 for cuda (the rank's GPU now its current device), 0 for cpu.
 * type is --device's text (NULL: auto); command names the command in messages. */
int command_device_on_cuda(const char *command, const char *type);

/* On cuda, rank 0's line "COMMAND: device: cuda (...)"; nothing on the CPU (whose
 * output stays as it was before the commands ran on GPUs). */
void command_device_print(const char *command, int on_cuda);

#endif
