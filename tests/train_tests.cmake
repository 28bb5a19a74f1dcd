# Tests of `ldm train` (tests/train_scenarios.sh): the same global batch gives the
# same losses and weights on 1 rank, 2 ranks and with gradient accumulation;
# reruns are bit-identical; the tiny config learns; a non-finite gradient on one
# rank is skipped by all; the run directory is protected; bad batch splits and
# bad flags are refused; on a GPU (device.type cuda) the DiT and the
# autoencoder follow the CPU's losses and resume exactly. Included from
# tests/CMakeLists.txt (LDM_MPIRUN, LDM_SYSTEM_PYTHON and LDM_EXPECT_ERROR come
# from there and prepare_tests.cmake).

if(TARGET ldm)
  # ldm_poisoned_gradient: the ldm program with tests/poisoned_gradient.c's
  # wrapper around every trainable it creates (put in place by the linker), for
  # the scenarios that poison a step's gradient on the last rank.
  set(ldm_trainable_creators dit_trainable_create autoencoder_trainable_create distill_trainable_create)
  if(LDM_HAVE_CUDA)
    list(APPEND ldm_trainable_creators dit_cuda_trainable_create autoencoder_cuda_trainable_create)
  endif()
  list(TRANSFORM ldm_trainable_creators PREPEND "-Wl,--wrap=")
  add_executable(ldm_poisoned_gradient ${CMAKE_SOURCE_DIR}/train/cli/main.c poisoned_gradient.c)
  target_link_libraries(ldm_poisoned_gradient PRIVATE ldm_core)
  target_link_options(ldm_poisoned_gradient PRIVATE ${ldm_trainable_creators})

  set(LDM_TRAIN_WORK ${CMAKE_CURRENT_BINARY_DIR}/train)
  string(REPLACE ";" " " ldm_train_mpirun "${LDM_MPIRUN}")
  foreach(scenario equivalence elastic determinism learns nonfinite run-directory resume-1rank resume-2ranks signal
                  resume-world-size resume-mismatch crash export autoencoder
                  precision-curves precision-overflow precision-resume cuda ae-cuda cuda-ranks cuda-precision checkpoint-beside)
    string(REPLACE "-" "_" test_name "cli_train_${scenario}")
    add_test(NAME ${test_name}
      COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/train_scenarios.sh ${scenario} ${LDM_TRAIN_WORK}/${scenario})
    set_tests_properties(${test_name} PROPERTIES TIMEOUT 300 SKIP_RETURN_CODE 77
      ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_POISONED=$<TARGET_FILE:ldm_poisoned_gradient>;LDM_MPIRUN=${ldm_train_mpirun};LDM_PYTHON=${LDM_SYSTEM_PYTHON};\
LDM_TESTS=${CMAKE_CURRENT_SOURCE_DIR};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
  endforeach()

  # Two ranks on one host need two GPUs (the CPU emulation of CUDA makes two).
  set_property(TEST cli_train_cuda_ranks APPEND PROPERTY ENVIRONMENT "LDM_CUDA_EMULATED_DEVICES=2")

  # device.type auto on ranks that disagree (the CPU emulation of CUDA hides
  # its device from rank 0 only): refused on every rank before training.
  if(LDM_CUDA STREQUAL "EMULATE")
    set(ldm_train_mixed train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.batch_size=2
      --data /nonexistent.h5 --run ${LDM_TRAIN_WORK}/never)
    add_test(NAME cli_train_device_auto_mixed_cuda
      COMMAND ${LDM_EXPECT_ERROR} 2
        "^ldm: error: ldm train: device[.]type auto: some ranks have a GPU and others none; set device[.]type to cpu or cuda$" --
        ${LDM_MPIRUN} -np 1 -x CUDA_VISIBLE_DEVICES=-1 $<TARGET_FILE:ldm> ${ldm_train_mixed}
        : -np 1 $<TARGET_FILE:ldm> ${ldm_train_mixed})
    set_tests_properties(cli_train_device_auto_mixed_cuda PROPERTIES TIMEOUT 60)
    # A micro-batch beyond the GPU's memory (the emulated GPU has 16 GiB): one
    # line that says what is needed, before anything is read or written. The
    # tiny DiT in batches of 2^18 (51.5 GiB): DiT-B/2 would say the same, after
    # 7 s of zeroing its 1.3 GB host model.
    add_test(NAME cli_train_gpu_memory_cuda
      COMMAND ${LDM_EXPECT_ERROR} 2
        "^ldm: error: GPU memory: the DiT needs [0-9.]+ GiB for batches of 262144 samples in bf16, but the GPU has 16[.]00 GiB free of 16[.]00 GiB; lower the micro-batch [(]train[.]micro_batch[)]$" --
        $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set device.type=cuda
        --set train.precision=bf16 --set train.batch_size=262144 --data /nonexistent.h5 --run ${LDM_TRAIN_WORK}/never)
    set_tests_properties(cli_train_gpu_memory_cuda PROPERTIES TIMEOUT 60)
  endif()

  # Bad input, refused before anything is written: exit 2, one line.
  add_test(NAME cli_train_batch_split
    COMMAND ${LDM_EXPECT_ERROR} 2
      "^ldm: error: .*tiny[.]json: train[.]batch_size: expected a multiple of the world size [(]3 ranks[)], got 8$" --
      ${LDM_MPIRUN} -np 3 $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json
      --data /nonexistent.h5 --run ${LDM_TRAIN_WORK}/never)
  add_test(NAME cli_train_micro_batch_split
    COMMAND ${LDM_EXPECT_ERROR} 2
      "^ldm: error: .*tiny[.]json: train[.]batch_size: expected a multiple of world size x train[.]micro_batch [(]3 x 2 = 6[)], got 8$" --
      ${LDM_MPIRUN} -np 3 $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.micro_batch=2
      --data /nonexistent.h5 --run ${LDM_TRAIN_WORK}/never)
  add_test(NAME cli_train_missing_data
    COMMAND ${LDM_EXPECT_ERROR} 2 "^ldm: error: /nonexistent[.]h5: cannot read the data set file" --
      $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json
      --data /nonexistent.h5 --run ${LDM_TRAIN_WORK}/missing-data)
  add_test(NAME cli_train_missing_run
    COMMAND ${LDM_EXPECT_ERROR} 2 "^ldm: error: ldm train: option --run is required$" --
      $<TARGET_FILE:ldm> train --data x.h5)
  set_tests_properties(cli_train_batch_split cli_train_micro_batch_split cli_train_missing_data
    cli_train_missing_run PROPERTIES TIMEOUT 60)
endif()

# The kill loop (tests/kill_loop.sh): a few cycles of SIGKILL and --resume auto
# on 2 ranks end byte-identical to an uninterrupted run; the long run is in
# docs/testing.md.
if(TARGET ldm)
  add_test(NAME cli_kill_loop_cycles
    COMMAND sh ${CMAKE_CURRENT_SOURCE_DIR}/kill_loop.sh 4 7 ${CMAKE_CURRENT_BINARY_DIR}/kill-loop)
  set_tests_properties(cli_kill_loop_cycles PROPERTIES TIMEOUT 300
    ENVIRONMENT "LDM=$<TARGET_FILE:ldm>;LDM_MPIRUN=${ldm_train_mpirun};LDM_CONFIGS=${CMAKE_SOURCE_DIR}/configs")
endif()
