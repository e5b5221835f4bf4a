# test_errors.py — errors of the C++ core arrive as hybridmoe.Error (a RuntimeError) with the C++
# message, without the C++ backtrace; argument errors stay pybind11's TypeError.
import json

import pytest
import torch

import hybridmoe


def raised(fn):
    with pytest.raises(hybridmoe.Error) as info:
        fn()
    return str(info.value)


def test_error_is_a_runtime_error():
    assert issubclass(hybridmoe.Error, RuntimeError)


def test_group_check_message(world1):
    # dist::Group::from_process_group's TORCH_CHECK, word for word.
    assert raised(lambda: hybridmoe.Group(world1, [0, 1], name="tp")) == (
        "group 'tp' lists 2 ranks but its process group has size 1")


def test_collective_check_message(world1):
    group = hybridmoe.Group.from_torch(world1)
    assert raised(lambda: hybridmoe.all_to_all(torch.zeros(3, 2), [2], [2], group)) == (
        "all_to_all: input_splits should sum to the 3 rows of x, got 2")


def test_hf_config_messages(tmp_path):
    assert raised(lambda: hybridmoe.hf_config(str(tmp_path / "absent"))) == (
        f"hf: cannot read {tmp_path}/absent/config.json (expected a Hugging Face model directory "
        "with config.json)")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert raised(lambda: hybridmoe.hf_config(str(tmp_path))) == (
        f'{tmp_path}/config.json: model_type "llama" is not supported (expected mixtral, '
        "qwen2_moe, qwen3_moe, olmoe or deepseek_v3)")


def test_no_cpp_backtrace(world1):
    message = raised(lambda: hybridmoe.Group(world1, [], name="x"))
    assert "Exception raised from" not in message and "frame #" not in message


def test_argument_errors_stay_type_errors(world1):
    with pytest.raises(TypeError):
        hybridmoe.all_reduce_sum(torch.zeros(3), "not a group")
