"""What an Engine read before start() says: the attributes start() sets from the loaded model
(Engine._adopt) name themselves as such, instead of Python's "'Engine' object has no
attribute 'max_model_len'", which reads as if no Engine had one."""

from __future__ import annotations

# what start() sets (Engine._adopt) from the loaded model
SET_AT_START = frozenset({
    "device", "dtype", "model_config", "model_path", "model_name", "tokenizer", "eos_ids",
    "eos_token_id", "table", "runner", "kv_pool", "req_to_token", "max_model_len",
    "scheduler", "metrics", "prefix_cache", "planner", "grammars", "ranks"})


class Unstarted:
    """Engine's mixin: __getattr__ (called only for a name not set) raises AttributeError,
    so hasattr() and getattr(..., default) answer as without it, saying for SET_AT_START's
    names that start() sets them; a property whose getter raised AttributeError (Python then
    calls __getattr__) is run again so that its own error, naming what was missing, stands."""

    def __getattr__(self, name: str):
        if name in SET_AT_START:
            raise AttributeError(f"Engine.{name} is set when the engine starts (it loads the "
                                 "model): await engine.start(), or use `async with Engine(...) "
                                 "as engine`, first", name=name, obj=self)
        for klass in type(self).__mro__:
            if name in vars(klass):  # a descriptor whose __get__ raised AttributeError
                return vars(klass)[name].__get__(self, type(self))
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}",
                             name=name, obj=self)
