"""The plugin contract: everything a plugin imports from fw.

    from fw.plugin import AdapterPlugin, hookimpl

    @hookimpl
    def fw_adapters():
        return [AdapterPlugin(name="boft", schema="my_package:boft.json", summary="Butterfly OFT",
                              peft_config_class="BOFTConfig")]

A plugin module implements collecting hooks (``fw_adapters``, ``fw_decoders`` … see :mod:`fw.plugin.hookspecs`)
returning descriptors; behaviour is named by ``"module:function"`` strings, imported when used. Built-in plugins
(``fw.plugins``) import nothing else from fw, and a test keeps it so: this module is the whole public API.
Importing it imports no torch / transformers / peft; the helpers import them when called.
Testing helpers for plugin authors live in :mod:`fw.plugin.testing`.
"""
from fw.errors import FwError, shown
from fw.plugin.declared import declare
from fw.plugin.descriptors import (AdapterPlugin, DecodedOutputs, DecoderPlugin, InitializerPlugin, MatcherPlugin,
                                   MergeStrategyPlugin, PluginDescriptor, QuantizerPlugin, RetrieverPlugin)
from fw.plugin.hookspecs import hookimpl
from fw.plugin.lazy import resolve
from fw.plugin.models import (device, ensure_pad_token, hub_error_message, hub_token, inference_mode, is_kbit_model,
                              library_message, looks_like_path, model_device, quiet_libraries)
from fw.plugin.peft import build_peft_config, keep_initial_adapter, with_defaults
from fw.plugin.registry import get_registry
from fw.plugin.schemas import load_schema, schema_defaults
from fw.plugin.targets import (divisor_problems, layer_shape, size_limit_problems, target_layer_shapes,
                               targeted_modules)

__all__ = [
    # declaring plugins
    "hookimpl", "declare", "PluginDescriptor", "AdapterPlugin", "InitializerPlugin", "QuantizerPlugin",
    "MatcherPlugin", "MergeStrategyPlugin", "RetrieverPlugin", "DecoderPlugin", "DecodedOutputs",
    # errors a plugin raises (one line for the user: name the config key, say what fits; a value shown bounded, a
    # library's exception as one whole line)
    "FwError", "shown", "library_message",
    # lookups
    "get_registry", "resolve", "load_schema", "schema_defaults", "with_defaults",
    # adapters: the PEFT config of a schema, targeted layers and their shapes (check_model)
    "build_peft_config", "target_layer_shapes", "targeted_modules", "layer_shape", "divisor_problems",
    "size_limit_problems",
    # initializers and other plugins that run a model
    "keep_initial_adapter", "model_device", "inference_mode", "is_kbit_model",
    # plugins that load a model of their own (an embedding model)
    "device", "hub_token", "looks_like_path", "hub_error_message", "ensure_pad_token", "quiet_libraries",
]
