"""``save_hf`` streams its safetensors file tensor by tensor: the bytes equal safetensors'
own writer on the whole state dict (what it wrote before), in float32 and bfloat16, and
the file loads back exactly."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.flax import save

from prune_jax.models.llama import load_hf_dir, state_dict_from_model
from prune_jax.models.llama.checkpoint import save_hf


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_save_hf_writes_safetensors_own_bytes(tmp_path: Path, tiny_llama_config, random_llama, dtype):
    config = tiny_llama_config(vocab_size=40, num_layers=2, heads=(4, 2), intermediate=24, head_dim=4, attention_bias=True,
                               mlp_bias=True, dtype=dtype)
    model = random_llama(config, seed=4)
    save_hf(model, None, tmp_path / "m")
    whole = {k: jnp.asarray(v, jnp.bfloat16 if dtype == "bfloat16" else jnp.float32) for k, v in state_dict_from_model(model).items()}
    assert (tmp_path / "m" / "model.safetensors").read_bytes() == save(whole, metadata={"format": "pt"})
    want, got = state_dict_from_model(model), state_dict_from_model(load_hf_dir(tmp_path / "m", dtype=dtype))
    assert want.keys() == got.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
