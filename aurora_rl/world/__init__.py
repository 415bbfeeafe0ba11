"""aurora_rl.world: the miniature world every experiment, example and test runs in.

Five text domains built offline (code, prose, math, sql, chat), a byte-level BPE tokenizer
and a small Llama-style target trained on them, cached on disk and loadable like any
Hugging Face model; plus seeded traffic streams (mixed, ordered, drift) over any prompt set.

    world = get_world("tiny")                # or "default", or a WorldRecipe
    target, tokenizer = world.target(), world.tokenizer()
    stream = make_traffic(world.dataset("heldout"), "ordered", num_requests=100, seed=0)
"""

from .lm_training import LMTraining, train_causal_lm
from .precision import PRECISIONS, native_bf16, resolve_precision
from .recipe import BUILD_VERSION, RECIPES, ModelShape, WorldRecipe
from .traffic import SCHEDULES, Phase, Request, TrafficStream, load_prompts, make_traffic
from .world import World, get_world, world_dir

__all__ = [
    "BUILD_VERSION",
    "LMTraining",
    "PRECISIONS",
    "RECIPES",
    "ModelShape",
    "Phase",
    "Request",
    "SCHEDULES",
    "TrafficStream",
    "World",
    "WorldRecipe",
    "get_world",
    "load_prompts",
    "make_traffic",
    "native_bf16",
    "resolve_precision",
    "train_causal_lm",
    "world_dir",
]
