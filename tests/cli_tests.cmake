# Command-line tests of config errors: a bad config (or --set) must end `ldm bench`
# with exit status 2 and one line "ldm: error: FILE: section.key: ..." on stderr,
# before any work is done. Included from tests/CMakeLists.txt; the bad files are
# tests/data/bad-*.json. Regexes use [.] and [(] rather than backslashes, which
# CMake would take as its own escapes.

if(TARGET ldm)
  set(LDM_BAD_CONFIGS ${CMAKE_CURRENT_SOURCE_DIR}/data)

  # ldm_cli_config_test(NAME REGEX ARGS...): runs `ldm bench ARGS... --steps 1`.
  function(ldm_cli_config_test name regex)
    add_test(NAME cli_config_${name}
      COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2 "${regex}" --
              $<TARGET_FILE:ldm> bench ${ARGN} --steps 1
      WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  endfunction()

  ldm_cli_config_test(unknown_key
    "^ldm: error: .*bad-unknown-key[.]json: train[.]lr_schedul: unknown key [(]known keys in train: steps, "
    --config ${LDM_BAD_CONFIGS}/bad-unknown-key.json)
  ldm_cli_config_test(wrong_type
    "^ldm: error: .*bad-wrong-type[.]json: model[.]depth: expected an integer >= 1, got \"twelve\"$"
    --config ${LDM_BAD_CONFIGS}/bad-wrong-type.json)
  ldm_cli_config_test(out_of_range
    "^ldm: error: .*bad-out-of-range[.]json: model[.]depth: expected an integer >= 1, got -3$"
    --config ${LDM_BAD_CONFIGS}/bad-out-of-range.json)
  ldm_cli_config_test(cross_field
    "^ldm: error: .*bad-heads[.]json: model[.]hidden_size: expected a multiple of model[.]num_heads [(]5[)], got 64$"
    --config ${LDM_BAD_CONFIGS}/bad-heads.json)
  ldm_cli_config_test(missing_file
    "^ldm: error: .*does-not-exist[.]json: cannot read: No such file or directory$"
    --config ${LDM_BAD_CONFIGS}/does-not-exist.json)
  ldm_cli_config_test(invalid_json
    "^ldm: error: .*bad-invalid-json[.]json: not valid JSON near line 3$"
    --config ${LDM_BAD_CONFIGS}/bad-invalid-json.json)
  ldm_cli_config_test(bad_set
    "^ldm: error: --set model[.]depth: expected section[.]key=value$"
    --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set model.depth)
  ldm_cli_config_test(bad_set_value
    "^ldm: error: --set model[.]depth=-3: model[.]depth: expected an integer >= 1, got -3$"
    --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set model.depth=-3)
  ldm_cli_config_test(bad_set_key
    "^ldm: error: --set train[.]lr_schedul=cosine: train[.]lr_schedul: unknown key"
    --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.lr_schedul=cosine)
  ldm_cli_config_test(bad_precision
    "^ldm: error: --set train[.]precision=fp8: train[.]precision: expected one of \"fp32\", \"bf16\", \"fp16\", got \"fp8\"$"
    --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.precision=fp8)
  ldm_cli_config_test(bad_loss_scale
    "^ldm: error: --set train[.]loss_scale_initial=0: train[.]loss_scale_initial: expected a number > 0, got 0$"
    --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.loss_scale_initial=0)
  ldm_cli_config_test(bad_growth_interval
    "^ldm: error: --set train[.]loss_scale_growth_interval=0: train[.]loss_scale_growth_interval: expected an integer >= 1, got 0$"
    --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set train.loss_scale_growth_interval=0)
endif()

# device.type (where ldm train, train-ae and distill run): cuda with no GPU to run on is one line and
# exit 2 before anything is read or written (a CPU build says it has no CUDA, a CUDA build that
# there is no device, or, without an NVIDIA driver at all (CI), the runtime's error, which CUDA
# gives as 'CUDA driver version is insufficient': the regex takes the three); an unknown type is the config
# validator's.
if(TARGET ldm)
  add_test(NAME cli_train_device_cuda_refused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm train: device[.]type: cuda: (this build has no CUDA [(]cmake -DLDM_CUDA=ON[)]|no CUDA device on this machine|CUDA error: .+)$" --
            $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set device.type=cuda
            --data /nonexistent.h5 --run ${CMAKE_CURRENT_BINARY_DIR}/device-never)
  set_tests_properties(cli_train_device_cuda_refused PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1")
  add_test(NAME cli_train_device_bad_type
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: --set device[.]type=gpu: device[.]type: expected one of \"auto\", \"cpu\", \"cuda\", got \"gpu\"$" --
            $<TARGET_FILE:ldm> train --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --set device.type=gpu
            --data /nonexistent.h5 --run ${CMAKE_CURRENT_BINARY_DIR}/device-never)
  add_test(NAME cli_train_ae_device_cuda_refused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm train-ae: device[.]type: cuda: (this build has no CUDA [(]cmake -DLDM_CUDA=ON[)]|no CUDA device on this machine|CUDA error: .+)$" --
            $<TARGET_FILE:ldm> train-ae --config ${CMAKE_SOURCE_DIR}/configs/ae-tiny.json --set device.type=cuda
            --data /nonexistent.h5 --run ${CMAKE_CURRENT_BINARY_DIR}/device-never)
  set_tests_properties(cli_train_ae_device_cuda_refused PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1")
  add_test(NAME cli_distill_device_cuda_refused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm distill: device[.]type: cuda: (this build has no CUDA [(]cmake -DLDM_CUDA=ON[)]|no CUDA device on this machine|CUDA error: .+)$" --
            $<TARGET_FILE:ldm> distill --teacher /nonexistent-run --config ${CMAKE_SOURCE_DIR}/configs/tiny.json
            --set device.type=cuda --data /nonexistent.h5 --run ${CMAKE_CURRENT_BINARY_DIR}/device-never)
  set_tests_properties(cli_distill_device_cuda_refused PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1")
  add_test(NAME cli_distill_device_bad_type
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: --set device[.]type=gpu: device[.]type: expected one of \"auto\", \"cpu\", \"cuda\", got \"gpu\"$" --
            $<TARGET_FILE:ldm> distill --teacher /nonexistent-run --config ${CMAKE_SOURCE_DIR}/configs/tiny.json
            --set device.type=gpu --data /nonexistent.h5 --run ${CMAKE_CURRENT_BINARY_DIR}/device-never)
  set_tests_properties(cli_train_device_cuda_refused cli_train_device_bad_type cli_train_ae_device_cuda_refused
    cli_distill_device_cuda_refused cli_distill_device_bad_type PROPERTIES TIMEOUT 60)
endif()

# The program's own surface: the demo's bench run, help, and bad commands and flags.
if(TARGET ldm)
  add_test(NAME cli_bench_tiny COMMAND $<TARGET_FILE:ldm> bench --config configs/tiny.json --steps 2 --warmup 1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli_bench_tiny PROPERTIES
    PASS_REGULAR_EXPRESSION "bench: images_per_s=[0-9.]+ ms_per_step=[0-9.]+ gflops=[0-9.]+")
  # The time per phase: the GEMMs counted (calls and GFLOP/s) and the optimizer timed.
  add_test(NAME cli_bench_tiny_phases COMMAND $<TARGET_FILE:ldm> bench --config configs/tiny.json --steps 1 --warmup 0
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli_bench_tiny_phases PROPERTIES PASS_REGULAR_EXPRESSION
    "gemm forward +[0-9.]+ +[0-9.]+ +[0-9.]+ +[0-9.]*[1-9][0-9.]* +[1-9][0-9]*\n.*attention backward .*optimizer [(]adamw[)] +[0-9.]+")
  # Mixed precision: the step runs and the activation memory per image is reported.
  foreach(precision bf16 fp16)
    add_test(NAME cli_bench_tiny_${precision} COMMAND $<TARGET_FILE:ldm> bench --config configs/tiny.json
      --set train.precision=${precision} --steps 2 --warmup 1 WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(cli_bench_tiny_${precision} PROPERTIES
      PASS_REGULAR_EXPRESSION "images_per_s=[0-9.]+ .* precision=${precision} bytes_per_image=[0-9]+")
  endforeach()
  # bench --device: cuda with no GPU to run on is one line and exit 2, before any work. A CPU
  # build says it has no CUDA, a CUDA build without a GPU (CI) that there is no device; every
  # GPU is hidden from the test, so that it also holds on a GPU machine.
  add_test(NAME cli_bench_device_cuda_refused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm bench: option --device: cuda: (this build has no CUDA [(]cmake -DLDM_CUDA=ON[)]|no CUDA device on this machine|CUDA error: .+)$" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --device cuda --steps 1)
  set_tests_properties(cli_bench_device_cuda_refused PROPERTIES ENVIRONMENT "CUDA_VISIBLE_DEVICES=-1")
  # The autoencoder's step (bench_ae.c), fp32 and bf16, and its option errors.
  foreach(precision fp32 bf16)
    add_test(NAME cli_bench_ae_${precision} COMMAND $<TARGET_FILE:ldm> bench --model ae --config configs/ae-tiny.json
      --set train.precision=${precision} --steps 2 --warmup 1 WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
    set_tests_properties(cli_bench_ae_${precision} PROPERTIES
      PASS_REGULAR_EXPRESSION "images_per_s=[0-9.]+ ms_per_step=[0-9.]+ cpu_ms_per_step=[0-9.]+ .* precision=${precision} model=ae conv=")
  endforeach()
  # The DiT block's linear-layer products alone (bench_gemm.c): twelve lines of positive
  # times and rates, then their total.
  add_test(NAME cli_bench_gemm COMMAND $<TARGET_FILE:ldm> bench --model gemm --config configs/tiny.json --steps 2
    --warmup 1 WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  string(REPEAT "bench: gemm [a-z0-9]+ [a-z_]+ rows=[1-9][0-9]* in=[1-9][0-9]* out=[1-9][0-9]* ms=[0-9.]*[1-9][0-9.]* gflops=[0-9.]*[1-9][0-9.]*\n"
         12 gemm_lines) # (CMake's regular expressions have no {n})
  set_tests_properties(cli_bench_gemm PROPERTIES PASS_REGULAR_EXPRESSION
    "^${gemm_lines}bench: gemm_total ms_per_block=[0-9.]*[1-9][0-9.]* gflops=[0-9.]+ gemm=(onednn|openblas) threads=[1-9]")
  add_test(NAME cli_bench_gemm_cuda_refused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm bench: option --model gemm: times the CPU only [(]--device cpu[)]$" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --model gemm --device cuda --steps 1)
  add_test(NAME cli_bench_bad_model
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm bench: option --model: expected dit, ae or gemm, got 'vae'$" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/ae-tiny.json --model vae --steps 1)
  add_test(NAME cli_bench_ae_data_refused
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm bench: option --data: times the DiT's loader, not with --model ae$" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/ae-tiny.json --model ae --data x.h5 --steps 1)
  add_test(NAME cli_bench_bad_device
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
            "^ldm: error: ldm bench: option --device: expected cpu or cuda, got 'gpu'$" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --device gpu --steps 1)
  # On a GPU the tiny bench runs there (a training and a distillation step) and says so; skipped
  # (77) where ldm refuses --device cuda
  # (failed with LDM_REQUIRE_GPU=1).
  add_test(NAME cli_bench_tiny_cuda
    COMMAND sh -c "out=$(\"$@\" 2>&1); s=$?; printf '%s\\n' \"$out\"; if [ $s = 2 ] && printf '%s' \"$out\" | grep -q 'option --device: cuda: '; then [ \"$LDM_REQUIRE_GPU\" = 1 ] && { echo 'cli_bench_tiny_cuda: FAILED: LDM_REQUIRE_GPU=1 but ldm refuses --device cuda' >&2; exit 1; }; exit 77; fi; [ $s = 0 ] && printf '%s' \"$out\" | grep -Eq 'images_per_s=[0-9.]+ .* device=cuda tflops=[0-9.]+' && printf '%s' \"$out\" | grep -Eq '^bench: distill images_per_s=[0-9.]+ .* device=cuda$'" sh
            $<TARGET_FILE:ldm> bench --config configs/tiny.json --device cuda --steps 2 --warmup 1
    WORKING_DIRECTORY ${CMAKE_SOURCE_DIR})
  set_tests_properties(cli_bench_tiny_cuda PROPERTIES SKIP_RETURN_CODE 77)
  add_test(NAME cli_help COMMAND $<TARGET_FILE:ldm> help)
  set_tests_properties(cli_help PROPERTIES PASS_REGULAR_EXPRESSION "bench.*forward.*version")
  add_test(NAME cli_unknown_command
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2 "^ldm: error: unknown command 'trian'" --
            $<TARGET_FILE:ldm> trian)
  add_test(NAME cli_unknown_option
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2 "^ldm: error: ldm bench: unknown option '--stpes'" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --stpes 3)
  # The training commands share one option table; each lists and takes only its own.
  foreach(case "train;--teacher" "train;--val-data" "train-ae;--ae" "train-ae;--teacher")
    list(GET case 0 command)
    list(GET case 1 option)
    string(REPLACE "-" "_" name "${command}${option}")
    add_test(NAME cli_not_an_option_of_${name}
      COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2
              "^ldm: error: ldm ${command}: unknown option '${option}' [(]see ldm ${command} --help[)]$" --
              $<TARGET_FILE:ldm> ${command} ${option} x --data d.h5 --run r)
  endforeach()
  add_test(NAME cli_distill_help_lists_its_options COMMAND $<TARGET_FILE:ldm> distill --help)
  # --ae is ldm distill's too (the pictures of a latents student); --val-data is not.
  set_tests_properties(cli_distill_help_lists_its_options PROPERTIES PASS_REGULAR_EXPRESSION "--teacher.*|--ae "
    FAIL_REGULAR_EXPRESSION "--val-data")
  add_test(NAME cli_bad_steps
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2 "^ldm: error: ldm bench: option --steps: expected an integer" --
            $<TARGET_FILE:ldm> bench --config ${CMAKE_SOURCE_DIR}/configs/tiny.json --steps ten)
  add_test(NAME cli_missing_value
    COMMAND ${CMAKE_CURRENT_SOURCE_DIR}/expect_error.sh 2 "^ldm: error: ldm bench: option --config needs a value" --
            $<TARGET_FILE:ldm> bench --config)
endif()
