"""Cross-field rules of the config language that JSON Schema expresses poorly.

Each rule reads the config with defaults filled and yields ConfigIssues (errors) or ConfigWarnings. A rule
declares the config paths it reads. When it meets a value of the wrong type there, the schema pass (or a
plugin's schema) has already reported that value: the rule stops quietly. Any other exception inside a rule is
a bug, and fails validation loudly with the rule's name (:class:`RuleFailure`) instead of silently disabling it.
"""
from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fw.config import view
from fw.config.optimizers import OPTIMIZERS
from fw.config.sockets import MERGE
from fw.config.store import trainer_schema
from fw.errors import ConfigIssue, ConfigWarning, FwError, did_you_mean, shown
from fw.plugin.lazy import resolve
from fw.plugin.registry import Registry

Config = dict[str, Any]
Check = Callable[[Config, Registry], Iterator[ConfigIssue]]

SAMPLE, TASK, CONTEXT = "__sample__", "__task__", "__context__"
#: adapter names become module-dict keys and directory names: no dots, slashes or spaces
ADAPTER_NAME = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Rule:
    check: Check
    #: config paths the rule reads (``trainer.type``; ``adapter``: the section and everything in it)
    reads: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.check.__name__

    def reads_any(self, paths: Iterable[str]) -> bool:
        """Whether one of ``paths`` lies on, under or above a path this rule reads."""
        return any(_overlap(path, read) for path in paths for read in self.reads)


RULES: list[Rule] = []


class RuleFailure(RuntimeError):
    """A validation rule crashed where no problem had been reported: a bug in fw (or in a plugin's check)."""


def rule(*reads: str) -> Callable[[Check], Check]:
    """Register a rule that reads the config at ``reads``."""
    if reads and callable(reads[0]):  # written @rule without the paths: it would never run
        raise TypeError(f"@rule needs the config paths {reads[0].__name__} reads, e.g. @rule('trainer.type')")
    def register(function: Check) -> Check:
        RULES.append(Rule(function, reads))
        return function
    return register


def _overlap(path: str, read: str) -> bool:
    shorter, longer = sorted((path, read), key=len)
    return not shorter or longer == shorter or longer.startswith((shorter + ".", shorter + "["))


def check(config: Config, registry: Registry, raw: Config | None = None,
          reported: Iterable[ConfigIssue] = ()) -> Iterator[ConfigIssue]:
    """Every rule's findings. ``reported``: the problems found before (schemas, plugin checks). A rule that
    raises stops quietly when one of them lies where it reads; otherwise it raises :class:`RuleFailure`."""
    derive_defaults(config, raw or {})
    reported_paths = [issue.path for issue in reported]
    for each in RULES:
        try:
            yield from each.check(config, registry)
        except Exception as exc:
            if each.reads_any(reported_paths):
                continue  # it met a value the schema already reported
            raise RuleFailure(f"the validation rule '{each.name}' crashed ({type(exc).__name__}: {exc}). This is "
                              "a bug in fw, not in your config: please report it with the config.") from exc


def derive_defaults(config: Config, raw: Config) -> None:
    """Defaults that depend on other fields: the spec's decoding strategies (contrastive, diverse beam) are
    defined without do_sample, so it follows them unless set. (The decoder's default follows the output type:
    see fw.config.sockets.)"""
    generation, written = config.get("generation"), raw.get("generation")
    if isinstance(generation, dict) and "do_sample" not in (written if isinstance(written, dict) else {}):
        contrastive = _number(generation.get("penalty_alpha"), 0) > 0
        diverse = _number(generation.get("num_beam_groups"), 1) > 1
        if contrastive or diverse:
            generation["do_sample"] = False


def _number(value: Any, otherwise: float) -> float:
    """``value`` when it is a number, else ``otherwise`` (a wrong type is the schema's to report)."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else otherwise


def template_fields(template: str) -> list[str]:
    """The ``{names}`` a template uses; raises ValueError for unbalanced braces."""
    return [name for _, name, _, _ in string.Formatter().parse(template) if name]


# -- features ---------------------------------------------------------------------------------------
@rule("input_features")
def one_text_input(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    inputs = config["input_features"]
    if len(inputs) != 1:
        names = ", ".join(str(f.get("name")) for f in inputs)
        yield ConfigIssue("input_features", f"an LLM takes exactly one text input, got {len(inputs)} ({names}).",
                          "combine several columns into one input with prompt.template, e.g. "
                          "'{question} {context}'")


@rule("input_features", "output_features")
def feature_names_unique(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    names = [f.get("name") for f in config["input_features"] + config["output_features"]]
    for name in sorted({n for n in names if names.count(n) > 1}):
        yield ConfigIssue("output_features", f"feature name {shown(name)} is used more than once; feature names "
                                             "must be unique (as in Ludwig).", "rename the input or the output feature")


@rule("output_features")
def one_output(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    outputs = config["output_features"]
    if len(outputs) != 1:
        yield ConfigIssue("output_features", f"an LLM has exactly one output feature, got {len(outputs)}.")


@rule("output_features", "trainer.type")
def output_type_fits_trainer(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    feature = config["output_features"][0]
    if config["trainer"]["type"] == "finetune" and feature["type"] != "text":
        yield ConfigIssue("output_features[0].type",
                          f"trainer.type: finetune needs a text output, got {shown(feature['type'])}.",
                          "set the output type to text even for classification, or use trainer.type: none "
                          "for in-context classification with a category output")


@rule("output_features")
def decoder_fits_output(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """The decoder plugin produces the output's type (its ``output_types``)."""
    for index, feature in enumerate(config["output_features"]):
        kind, name = feature["type"], feature["decoder"].get("type")
        if not registry.has("decoder", name) or kind in registry.get("decoder", name).output_types:
            continue
        fitting = [p.name for p in registry.all("decoder") if kind in p.descriptor.output_types]
        message = (f"a {kind} output needs decoder type {' or '.join(fitting)}, got {shown(name)}." if fitting else
                   f"{name} needs an output of type {' or '.join(registry.get('decoder', name).output_types)}.")
        yield ConfigIssue(f"output_features[{index}].decoder.type", message)


# -- prompt -----------------------------------------------------------------------------------------
@rule("prompt")
def template_placeholders(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    prompt = config["prompt"]
    template = prompt.get("template")
    retrieval = (prompt.get("retrieval") or {}).get("type")
    if template is None:
        if retrieval and not prompt.get("task"):
            yield ConfigIssue("prompt", "retrieval needs prompt.task or prompt.template to place the examples.",
                              "set prompt.task, or a template with {__context__}")
        return
    try:
        names = template_fields(template)
    except ValueError as exc:
        yield ConfigIssue("prompt.template", f"is not a valid template: {exc}.",
                          "write literal braces as {{ and }}")
        return
    if not [n for n in names if n not in (TASK, CONTEXT)]:
        yield ConfigIssue("prompt.template", "must contain at least one dataset column or {__sample__} in "
                                             "curly brackets, e.g. {question}.")
    if prompt.get("task") and TASK not in names:
        yield ConfigIssue("prompt.template", "prompt.task is set, so the template must contain {__task__}.")
    if retrieval and CONTEXT not in names:
        yield ConfigIssue("prompt.template", "prompt.retrieval is set, so the template must contain "
                                             "{__context__} where the retrieved examples go.")


@rule("prompt.retrieval")
def no_retrieval_takes_no_retrieval_keys(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Ludwig's checks of a retrieval section without a type (k: 0 with a type means 1: fw.config.derive)."""
    retrieval = config["prompt"].get("retrieval") or {}
    if retrieval.get("type") is not None:
        return
    if retrieval.get("k", 0):
        yield ConfigIssue("prompt.retrieval.k", f"is {retrieval['k']} but prompt.retrieval.type is null "
                                                "(no retrieval).",
                          "set a retrieval type (random, semantic), or k: 0")
    if retrieval.get("model_name") is not None:
        yield ConfigIssue("prompt.retrieval.model_name", "is set but prompt.retrieval.type is null (no retrieval).",
                          "set type: semantic, or remove model_name")


@rule("prompt.template", "output_features")
def template_leaves_out_the_answer(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """A template naming the output column would show the model the answer it is trained to give (Ludwig's check)."""
    template = config["prompt"].get("template")
    if not template:
        return
    output = config["output_features"][0]
    column = output.get("column") or output["name"]
    try:
        names = template_fields(template)
    except ValueError:  # template_placeholders reports it
        return
    if column in names:
        yield ConfigIssue("prompt.template", f"names the output column {{{column}}}: the model would be shown the "
                                             "answer. fw appends the target after the prompt itself.",
                          f"remove {{{column}}} from the template")


# -- adapters ---------------------------------------------------------------------------------------
@rule()
def adapter_xor_adapters(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    if config.get("adapter") is not None and config.get("adapters") is not None:
        yield ConfigIssue("adapters", "adapter and adapters are mutually exclusive.",
                          "use adapter for one adapter, or adapters.adapters for several named ones")


@rule("adapters")
def adapters_names_exist(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    adapters = config.get("adapters")
    if adapters is None:
        return
    names = list(adapters["adapters"])
    merge = adapters.get("merge")
    available = names + ([merge.get("name")] if merge and merge.get("name") else [])
    active = adapters.get("active")
    if active is not None and active not in available:
        yield ConfigIssue("adapters.active", f"names no adapter: {shown(active)}. Adapters: {', '.join(available)}."
                          + did_you_mean(active, available))
    if not merge:
        return
    sources = merge.get("sources") or []
    for index, source in enumerate(sources):
        if source not in names:
            yield ConfigIssue(f"adapters.merge.sources[{index}]",
                              f"names no adapter: {shown(source)}. Adapters: {', '.join(names)}.")
    weights = merge.get("weights")
    if weights is not None and len(weights) != len(sources):
        yield ConfigIssue("adapters.merge.weights", f"has {len(weights)} weight(s) for {len(sources)} source(s); "
                                                    "give one weight per source.")
    if merge.get("name") in names:
        yield ConfigIssue("adapters.merge.name", f"{shown(merge['name'])} is already an adapter's name; "
                                                 "the merged adapter needs a new one.")
    yield from _merge_sources_compatible(adapters, merge, registry)


def _merge_sources_compatible(adapters: dict, merge: dict, registry: Registry) -> Iterator[ConfigIssue]:
    sections = {name: adapters["adapters"][name] for name in merge.get("sources") or []
                if name in adapters["adapters"]}
    for name, section in sections.items():
        if registry.has("adapter", section.get("type", "")) and \
                not registry.get("adapter", section["type"]).lora_family:
            yield ConfigIssue(f"adapters.adapters.{name}.type",
                              f"merging needs LoRA-family adapters (PEFT add_weighted_adapter); "
                              f"{shown(name)} is {shown(section['type'])}.")
    combination = merge.get(MERGE.selector, MERGE.default)
    if not registry.has("merge_strategy", combination):
        return
    strategy = registry.get("merge_strategy", combination)
    ranks = {name: peft_rank(section) for name, section in sections.items()}
    if strategy.requires_equal_ranks and len(set(ranks.values())) > 1:
        listed = ", ".join(f"{name} r={rank}" for name, rank in ranks.items())
        yield ConfigIssue("adapters.merge.combination_type",
                          f"{shown(combination)} needs sources of equal rank, got {listed}.",
                          "use combination_type svd or cat, or give the adapters the same r")


@rule("adapter", "adapters")
def multi_adapter_fits_peft(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Several named adapters: what PEFT would refuse after loading the model or after training, found before
    (names PEFT cannot use, mixed methods, initializers that rewrite the shared base, merge sources)."""
    adapters = config.get("adapters")
    if adapters is None or config.get("adapter") is not None:
        return
    sections = adapters.get("adapters") or {}
    yield from _names_usable(sections, registry)
    yield from _one_method(sections)
    yield from _initializers_fit(sections, registry)
    merge = adapters.get("merge")
    if merge:
        yield from _merge_sources_fit(sections, merge, registry)


def _named_path(name: str, key: str | None = None) -> str:
    return f"adapters.adapters.{name}" + (f".{key}" if key else "")


def _names_usable(sections: dict, registry: Registry) -> Iterator[ConfigIssue]:
    for name, section in sections.items():
        if not ADAPTER_NAME.fullmatch(str(name)):
            yield ConfigIssue(_named_path(name), f"adapter name {shown(name)} may use only letters, digits, _ and - "
                                                 "(it becomes a PEFT module key and a directory name).")
            continue
        kind = section.get("type")
        declared = registry.get("adapter", kind).peft_prefix if registry.has("adapter", kind) else None
        prefix = declared if declared is not None else f"{kind}_"
        if name in prefix:
            yield ConfigWarning(_named_path(name), f"adapter name {shown(name)} is part of PEFT's parameter prefix "
                                                   f"{shown(prefix)}; PEFT warns this may re-initialize its weights "
                                                   "when loading.", "choose a longer name, e.g. task_a")


def _one_method(sections: dict) -> Iterator[ConfigIssue]:
    types = {name: section.get("type") for name, section in sections.items()}
    if len(set(types.values())) > 1:
        first_name, first_type = next(iter(types.items()))
        for name, kind in types.items():
            if kind != first_type:
                yield ConfigIssue(_named_path(name, "type"),
                                  f"{shown(name)} is {shown(kind)} but {shown(first_name)} is {shown(first_type)}: "
                                  "PEFT keeps one adapter method per model, so every named adapter must have the same "
                                  "type.",
                                  "give them all the same type")


def _initializers_fit(sections: dict, registry: Registry) -> Iterator[ConfigIssue]:
    """Initializers that rewrite the base weights or wrap the model themselves (a ``prepare`` step) cannot share
    one base model with other adapters."""
    for name, section in sections.items():
        value = section.get("init_lora_weights")
        init = "default" if value is True else value
        if not isinstance(init, str) or not registry.has("initializer", init):
            continue
        if registry.get("initializer", init).prepare:
            yield ConfigIssue(_named_path(name, "init_lora_weights"),
                              f"{shown(init)} is not available for named adapters: it rewrites the shared base weights "
                              "or needs its own pass before wrapping, which would change every other adapter.",
                              "use it with a single `adapter:` section, or init_lora_weights: true / gaussian")


def _merge_sources_fit(sections: dict, merge: dict, registry: Registry) -> Iterator[ConfigIssue]:
    """add_weighted_adapter's own constraints beyond equal ranks: each source adapter plugin's
    ``check_merge_source``, and one form of target_modules."""
    sources = {name: sections[name] for name in merge.get("sources") or [] if name in sections}
    for position, (name, section) in enumerate(sources.items()):
        kind = section.get("type")
        check = registry.get("adapter", kind).check_merge_source if registry.has("adapter", kind) else None
        for key, *message in resolve(check)(name, section, position == 0) if check else []:
            yield ConfigIssue(_named_path(name, key), *message)
    forms = {name: "a regex" if isinstance(section.get("target_modules"), str) else "a list"
             for name, section in sources.items()}
    if len(set(forms.values())) > 1:
        listed = ", ".join(f"{name} ({form})" for name, form in forms.items())
        yield ConfigIssue("adapters.merge.sources",
                          f"PEFT's add_weighted_adapter needs every source's target_modules in the same form, "
                          f"got {listed}.", "write target_modules as a list (or as a regex) in all of them")


def peft_rank(section: dict) -> Any:
    """The rank PEFT's add_weighted_adapter compares: ``r``, or the largest ``rank_pattern`` value."""
    pattern = section.get("rank_pattern") or {}
    return max([section.get("r"), *pattern.values()]) if pattern else section.get("r")


# -- quantization -----------------------------------------------------------------------------------
@rule("quantization", "trainer.type", "adapter", "adapters")
def quantized_finetune_needs_lora(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    if config.get("quantization") is None or config["trainer"]["type"] != "finetune":
        return
    sections = view.adapter_sections(config)
    if not sections and not config["quantization"].get("qat"):  # QAT trains the full weights, fake-quantized
        yield ConfigIssue("quantization", "quantized fine-tuning needs a LoRA-family adapter; "
                                          "full fine-tuning of quantized weights is not possible.",
                          "add adapter: {type: lora}, or remove quantization")
    for path, section in sections.items():
        kind = section.get("type")
        if registry.has("adapter", kind) and not registry.get("adapter", kind).lora_family:
            family = ", ".join(p.name for p in registry.all("adapter") if p.descriptor.lora_family)
            yield ConfigIssue(f"{path}.type", f"quantized fine-tuning needs a LoRA-family adapter "
                                              f"({family}), got {shown(kind)}.")


@rule("quantization")
def quantizer_mode_and_qat(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    quantization = config.get("quantization")
    if quantization is None:
        return
    backend = quantization.get("backend")
    if not registry.has("quantizer", backend):
        return
    descriptor = registry.get("quantizer", backend)
    if quantization.get("qat") and not descriptor.supports_qat:
        qat_backends = [p.name for p in registry.all("quantizer") if p.descriptor.supports_qat]
        yield ConfigIssue("quantization.qat", f"QAT is not supported by backend {shown(backend)}.",
                          f"QAT requires backend: {' or '.join(qat_backends)}" if qat_backends else
                          "no installed quantization backend supports QAT")


@rule("adapter", "adapters", "quantization")
def initializer_fits_config(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """The initializer plugin's own check against its adapter section and the rest of the config."""
    for path, section in view.adapter_sections(config).items():
        name = "default" if section.get("init_lora_weights") is True else section.get("init_lora_weights")
        if not isinstance(name, str) or not registry.has("initializer", name):
            continue
        check = registry.get("initializer", name).check_config
        for key, message in resolve(check)(section, config) if check else []:
            yield ConfigIssue(f"{path}.{key}", message)


# -- generation ---------------------------------------------------------------------------------------
@rule("generation")
def generation_combinations(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    g = config["generation"]
    beams, groups = g["num_beams"], g["num_beam_groups"]
    if groups > 1:
        if beams < 2 or beams % groups:
            yield ConfigIssue("generation.num_beam_groups", f"{groups} group(s) must divide num_beams "
                                                            f"({beams}) and num_beams must be > 1.")
        if g["do_sample"]:
            yield ConfigIssue("generation.do_sample", "diverse beam search (num_beam_groups > 1) cannot sample.",
                              "set do_sample: false, or num_beam_groups: 1")
        if g["diversity_penalty"] == 0:
            yield ConfigWarning("generation.diversity_penalty", "is 0, so the beam groups will be identical; "
                                                                "set it > 0 for diverse beam search.")
    elif g["diversity_penalty"] > 0:
        yield ConfigWarning("generation.diversity_penalty", "only acts with num_beam_groups > 1; ignored.")
    if g.get("penalty_alpha") and g["do_sample"]:
        yield ConfigIssue("generation.do_sample", "contrastive search (penalty_alpha > 0) does not sample.",
                          "set do_sample: false, or remove penalty_alpha")
    if g.get("penalty_alpha") and g["top_k"] <= 1:
        yield ConfigIssue("generation.top_k", f"contrastive search (penalty_alpha) needs top_k > 1, got {g['top_k']}.")
    if g.get("min_new_tokens") is not None and g.get("max_new_tokens") is not None \
            and g["min_new_tokens"] > g["max_new_tokens"]:
        yield ConfigIssue("generation.min_new_tokens", f"{g['min_new_tokens']} exceeds max_new_tokens "
                                                       f"({g['max_new_tokens']}).")
    if g.get("max_length") is not None and g["min_length"] > g["max_length"]:
        yield ConfigIssue("generation.min_length", f"{g['min_length']} exceeds max_length ({g['max_length']}).")


# -- model parameters / trainer ---------------------------------------------------------------------
@rule("model_parameters.rope_scaling")
def rope_scaling_complete(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    rope = config["model_parameters"]["rope_scaling"]
    if rope.get("rope_type") and rope.get("factor") is None:
        yield ConfigIssue("model_parameters.rope_scaling.factor",
                          f"rope_type {shown(rope['rope_type'])} needs a factor.", "e.g. factor: 2.0 doubles the context length")
    if rope.get("factor") is not None and not rope.get("rope_type"):
        yield ConfigIssue("model_parameters.rope_scaling.rope_type", "factor is set but rope_type is not.",
                          "set rope_type: linear or dynamic")
    if rope.get("rope_type") == "linear" and rope.get("factor") is not None and rope["factor"] < 1:
        yield ConfigIssue("model_parameters.rope_scaling.factor", f"linear scaling needs factor >= 1, got {rope['factor']}.")


@rule("preprocessing.split")
def split_probabilities_sum(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    split = config["preprocessing"]["split"]
    total = sum(split["probabilities"])
    if split["type"] != "fixed" and abs(total - 1.0) > 1e-6:
        yield ConfigIssue("preprocessing.split.probabilities", f"must sum to 1, got {total:g}.")


@rule("preprocessing.split", "input_features", "output_features")
def split_names_its_column(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    split = config["preprocessing"]["split"]
    if split["type"] in ("stratify", "hash", "datetime") and not split.get("column"):
        yield ConfigIssue("preprocessing.split.column",
                          f"split type {shown(split['type'])} splits on a column; name it.",
                          "e.g. column: label (stratify), id (hash), date (datetime)")
    if split["type"] == "stratify":
        for feature in config["input_features"] + config["output_features"]:
            if (feature.get("column") or feature.get("name")) == split.get("column") and feature["type"] != "category":
                yield ConfigIssue("preprocessing.split.column", f"stratifies on {shown(split['column'])}, a "
                                                                f"{feature['type']} feature: Ludwig stratifies on "
                                                                "category columns only.",
                                  "stratify on a category output, or on a column that is no feature")


@rule("preprocessing.sample_size", "preprocessing.sample_ratio")
def sample_ratio_or_size(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    preprocessing = config["preprocessing"]
    if preprocessing.get("sample_size") is not None and preprocessing["sample_ratio"] < 1:
        yield ConfigIssue("preprocessing.sample_size", "cannot be used with sample_ratio < 1 (as in Ludwig).",
                          "keep one of sample_ratio and sample_size")


@rule("trainer.type", "adapter", "adapters")
def adapter_without_training(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Ludwig refuses a fresh adapter without the finetune trainer; fw warns (the spec's adapter snippets have no
    trainer section), saying what a missing trainer section means."""
    if config["trainer"]["type"] != "none":
        return
    for path, section in view.adapter_sections(config).items():
        if not section.get("pretrained_adapter_weights"):
            yield ConfigWarning(path, "trainer.type is none (also what a config without a trainer section means), "
                                      "so a fresh adapter is never trained and changes nothing.",
                                "add trainer: {type: finetune} to train it, or set pretrained_adapter_weights")


@rule("trainer.max_tokens_per_batch", "trainer.packing")
def token_budget_needs_packing(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    trainer = config["trainer"]
    if trainer.get("max_tokens_per_batch") is not None and not trainer.get("packing"):
        yield ConfigIssue("trainer.max_tokens_per_batch", "is the budget of a packed micro-batch, but "
                                                          "trainer.packing is false.",
                          "set trainer.packing: true, or remove max_tokens_per_batch (batch_size counts rows)")



# -- generation strategies, constrained decoding, label scoring (fw.infer.settings, fw.infer.constrained) -------
@rule("generation")
def generation_keys_transformers_dropped(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    g = config["generation"]
    if g.get("force_words_ids"):
        yield ConfigIssue("generation.force_words_ids", "needs constrained beam search, which transformers 5 "
                                                        "removed (it only exists as remote code on the Hub).",
                          "for classification use output_features[0].decoder.constrain_to_vocabulary: true; "
                          "to favour words use generation.sequence_bias")
    for index, pair in enumerate(g.get("forced_decoder_ids") or []):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
                and pair[0] >= 1 and pair[1] >= 0):
            yield ConfigIssue(f"generation.forced_decoder_ids[{index}]", f"expected [position >= 1, token_id], "
                                                                          f"got {shown(pair)}.",
                              "position 1 is the first generated token")
    bias = g.get("sequence_bias")
    if isinstance(bias, dict):
        for key in bias:
            if not all(part.isdigit() for part in str(key).replace(",", " ").split()) or not str(key).strip():
                yield ConfigIssue(f"generation.sequence_bias.{shown(key, 40, quoted=False)}", "keys are token ids separated by spaces or "
                                                                     "commas, e.g. '12 13': -2.0.")


@rule("generation")
def generation_strategy_conflicts(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    g = config["generation"]
    if g.get("penalty_alpha") and g["num_beams"] > 1:
        yield ConfigIssue("generation.penalty_alpha", f"contrastive search decodes one beam, but num_beams is "
                                                      f"{g['num_beams']}.",
                          "set num_beams: 1 for contrastive search, or remove penalty_alpha for beam search")
    if g.get("prompt_lookup_num_tokens") and (g["num_beams"] > 1 or g.get("penalty_alpha")):
        yield ConfigIssue("generation.prompt_lookup_num_tokens", "prompt-lookup decoding works with greedy "
                                                                 "decoding or sampling only.",
                          "set num_beams: 1 and no penalty_alpha, or prompt_lookup_num_tokens: null")


@rule("output_features", "generation.min_new_tokens")
def category_decoding_choices(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Constrained decoding and label scoring (run by fw.infer) on a category output's decoder."""
    feature = config["output_features"][0]
    decoder, path = feature["decoder"], "output_features[0].decoder"
    if feature["type"] != "category":
        return
    if decoder.get("constrain_to_vocabulary") and decoder.get("label_scoring"):
        yield ConfigIssue(f"{path}.label_scoring", "label scoring does not generate, so constrain_to_vocabulary "
                                                   "cannot apply; choose one.",
                          "label_scoring: rank labels by likelihood; constrain_to_vocabulary: generate a label")
    g = config["generation"]
    if decoder.get("constrain_to_vocabulary") and (g.get("min_new_tokens") or 0) > 0:
        yield ConfigIssue("generation.min_new_tokens", "with constrain_to_vocabulary a generation ends right after "
                                                       "its label, so a minimum length can make every token invalid.",
                          "remove generation.min_new_tokens")
    if decoder.get("label_scoring"):
        labels = [str(label) for label in decoder.get("match") or {}]
        for label in labels:
            longer = [other for other in labels if other != label and other.startswith(label)]
            if longer:
                yield ConfigWarning(f"{path}.match.{label}", f"is a prefix of {', '.join(map(repr, longer))}: label "
                                                             "scoring sums token log-probabilities, which favours "
                                                             "the shorter label.")


# -- trainer: Ludwig's options ----------------------------------------------------------------------
ALIGNMENT_TRAINERS = ("dpo", "kto", "orpo", "grpo")
#: Ludwig's validation_field of the combined loss
COMBINED = "combined"


def _trainer_property(key: str) -> dict:
    return trainer_schema()["properties"][key]


@rule("trainer.type")
def trainer_type_supported(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    kind = config["trainer"]["type"]
    if kind in ALIGNMENT_TRAINERS:
        yield ConfigIssue("trainer.type", f"{shown(kind)} (Ludwig's preference-alignment trainer) is not supported "
                                          "by fw yet.", "use finetune (supervised fine-tuning) or none (no training)")


@rule("trainer")
def finetune_keys_need_finetune(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Keys of the finetune trainer left under trainer.type none (fw.config.derive drops the defaulted ones)."""
    trainer = config["trainer"]
    if trainer["type"] != "none":
        return
    keys = [key for key, prop in trainer_schema()["properties"].items()
            if prop.get("x-fw-finetune-only") and key in trainer]
    if keys:
        yield ConfigWarning("trainer", f"type is none, so nothing is trained and {', '.join(keys)} "
                                       f"{'has' if len(keys) == 1 else 'have'} no effect.",
                            "set type: finetune to train")


@rule("trainer.learning_rate")
def learning_rate_is_a_number(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    if config["trainer"]["learning_rate"] == "auto":
        yield ConfigIssue("trainer.learning_rate", "Ludwig's auto (a learning-rate search) is not supported by fw.",
                          "give a number, e.g. 0.0001 for LoRA")


@rule("trainer.steps_per_checkpoint", "trainer.checkpoints_per_epoch")
def checkpoint_frequency_one_way(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    trainer = config["trainer"]
    if trainer["steps_per_checkpoint"] and trainer["checkpoints_per_epoch"]:
        yield ConfigIssue("trainer.checkpoints_per_epoch", "cannot be used with steps_per_checkpoint (as in Ludwig).",
                          "keep one of them; neither: once per epoch")


@rule("trainer")
def batch_sizes_agree(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Ludwig's rules: effective_batch_size = batch_size x gradient_accumulation_steps, when they are numbers."""
    trainer = config["trainer"]
    if trainer["type"] != "finetune":
        return
    keys = ("effective_batch_size", "batch_size", "gradient_accumulation_steps")
    effective, batch, steps = (trainer[key] for key in keys)
    if effective == "auto":
        return
    if effective > trainer["max_batch_size"]:
        yield ConfigIssue("trainer.max_batch_size", f"{trainer['max_batch_size']} is below effective_batch_size "
                                                    f"({effective}).")
    for name, value in (("batch_size", batch), ("gradient_accumulation_steps", steps)):
        if value != "auto" and (effective < value or effective % value):
            yield ConfigIssue("trainer.effective_batch_size", f"{effective} must be a multiple of {name} ({value}).",
                              "effective_batch_size = batch_size x gradient_accumulation_steps")
    if batch != "auto" and steps != "auto" and batch * steps != effective:
        yield ConfigWarning("trainer.effective_batch_size",
                            f"{effective} is not batch_size x gradient_accumulation_steps ({batch} x {steps}); "
                            f"training uses {batch} x {steps}, as Ludwig does.",
                            "set one of the three to auto")


@rule("trainer.layers_to_freeze_regex")
def freeze_regex_compiles(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    pattern = config["trainer"].get("layers_to_freeze_regex")
    if pattern:
        try:
            re.compile(pattern)
        except re.error as exc:
            yield ConfigIssue("trainer.layers_to_freeze_regex", f"is not a valid regular expression: {exc}.")


@rule("trainer.validation_field", "trainer.validation_metric", "output_features")
def validation_target_exists(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    trainer, output = config["trainer"], config["output_features"][0]
    if trainer["validation_field"] == COMBINED:  # Ludwig's combined loss: the one output's loss here
        if trainer["validation_metric"] != "loss":
            yield ConfigIssue("trainer.validation_metric",
                              f"validation_field combined (the combined loss) needs validation_metric loss, got "
                              f"{shown(trainer['validation_metric'])}.")
        return
    if trainer["validation_field"] != output["name"]:
        yield ConfigIssue("trainer.validation_field", f"names no output feature: {shown(trainer['validation_field'])}. "
                                                      f"The output feature is {shown(output['name'])} (or: combined).")
        return
    metrics = _trainer_property("validation_metric")["x-fw-validation-metrics"].get(output["type"], {})
    metric = trainer["validation_metric"]
    if metric not in metrics:
        yield ConfigIssue("trainer.validation_metric", f"{shown(metric)} is not a metric of a {output['type']} output. "
                                                       f"Metrics: {', '.join(metrics)}.{did_you_mean(metric, metrics)}")


@rule("trainer.optimizer")
def optimizer_parameters_fit(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    optimizer = config["trainer"].get("optimizer")
    if not isinstance(optimizer, dict):
        return
    kind = optimizer["type"]
    if kind in ("lbfgs", "muon"):
        yield ConfigIssue("trainer.optimizer.type", f"{shown(kind)} is not supported by fw: "
                          + ("L-BFGS needs a closure re-evaluating the loss every step." if kind == "lbfgs" else
                             "Ludwig's muon is Ludwig's own implementation."), "use adamw or adam")
        return
    params = _trainer_property("optimizer")["x-fw-optimizer-params"][kind]
    for key in optimizer:
        if key != "type" and key not in params:
            yield ConfigIssue(f"trainer.optimizer.{key}", f"is not a parameter of optimizer {shown(kind)}. Its "
                                                          f"parameters: {', '.join(params) or 'none'}.")
    yield from _optimizer_package_installed(kind)


def _optimizer_package_installed(kind: str) -> Iterator[ConfigIssue]:
    """A warning only: the config may be meant for another machine; training refuses with the same words."""
    import importlib.util

    module, _, package = OPTIMIZERS[kind]
    if importlib.util.find_spec(module.split(".")[0]) is None:
        yield ConfigWarning("trainer.optimizer.type", f"{shown(kind)} needs the {package} package, which is not "
                                                      f"installed here (pip install {package}).")


@rule("backend")
def backend_is_local(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """fw runs several processes with torch.distributed, started by torchrun / accelerate launch, not on Ray: a
    Ludwig Ray config gets the command that runs the same job."""
    backend = config["backend"]
    kind = backend.get("type")
    if kind == "ray":
        yield ConfigIssue("backend.type", ray_message(backend), ray_hint(backend))
    elif kind != "local":
        yield ConfigIssue("backend.type", f"{shown(kind)} is not supported: fw runs on this machine, or on several "
                                          "processes started by torchrun / accelerate launch.", "use type: local")


#: Ray-only keys of Ludwig's ``backend`` / ``backend.trainer``
RAY_KEYS = {"backend": ("processor", "loader"), "backend.trainer": ("num_workers", "use_gpu", "resources_per_worker")}


def ray_message(backend: dict) -> str:
    trainer = backend.get("trainer") if isinstance(backend.get("trainer"), dict) else {}
    workers = trainer.get("num_workers")
    count = str(workers) if isinstance(workers, int) and workers > 0 else "N"
    given = f" (backend.trainer.num_workers: {count})" if count != "N" else " (N: one per GPU)"
    return (f"'ray' is not supported: fw runs several processes with torch.distributed, without Ray. The same "
            f"job{given}: fw train --num_processes {count} --config CONFIG --dataset DATA, or torchrun "
            f"--nproc_per_node {count} -m fw train ..., or accelerate launch --num_processes {count} -m fw train ...; "
            "fw predict / fw evaluate the same way; several machines: README, Scale out.")


def ray_hint(backend: dict) -> str:
    trainer = backend.get("trainer") if isinstance(backend.get("trainer"), dict) else {}
    sections = {"backend": backend, "backend.trainer": trainer}
    ray_only = [f"{where}.{key}" for where, keys in RAY_KEYS.items() for key in keys if key in sections[where]]
    return "set backend.type: local" + (f" and remove {', '.join(ray_only)}" if ray_only else "")


@rule("backend.trainer.strategy", "quantization")
def strategy_can_run(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """The distributed strategy's settings fit together (fw.config.strategy)."""
    from fw.config import strategy

    for path, message in strategy.problems(config):
        yield ConfigIssue(path, message)
    chosen = strategy.of_config(config).name
    if chosen == "fsdp" and config.get("quantization"):
        yield from quantized_base_shards(config)


def quantized_base_shards(config: Config) -> Iterator[ConfigIssue]:
    """fsdp over a quantized base: the quantizer must store it in a form FSDP can split."""
    from fw.config import strategy

    try:
        strategy.section_for_sharding(config["quantization"])
    except FwError as exc:
        path, _, message = str(exc).partition(": ")
        yield ConfigIssue(path, message)


@rule("output_features")
def decoder_fallback_is_the_preprocessing_one(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """Ludwig overwrites decoder.fallback_label with preprocessing.fallback_label; a different one would be lost."""
    for index, feature in enumerate(config["output_features"]):
        decoder_value = feature["decoder"].get("fallback_label")
        wanted = (feature.get("preprocessing") or {}).get("fallback_label")
        if decoder_value not in (None, "", wanted):
            yield ConfigIssue(f"output_features[{index}].decoder.fallback_label",
                              f"{shown(decoder_value)} differs from output_features[{index}].preprocessing."
                              f"fallback_label ({shown(wanted)}), the one used (as in Ludwig).",
                              f"set output_features[{index}].preprocessing.fallback_label: {decoder_value}")


@rule("output_features")
def lowercase_targets_need_lowercase_labels(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    feature = config["output_features"][0]
    if feature["type"] != "category" or not (feature.get("preprocessing") or {}).get("lowercase"):
        return
    for label in feature["decoder"].get("match") or {}:
        if str(label) != str(label).lower():
            yield ConfigIssue(f"output_features[0].decoder.match.{label}",
                              "preprocessing.lowercase lower-cases the targets, so this label would never match one.",
                              f"write it {shown(str(label).lower())}")


@rule("output_features")
def fallback_label_is_a_class(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """A fallback_label that is one of the labels makes failed generations look like answers."""
    feature = config["output_features"][0]
    decoder = feature["decoder"]
    fallback = (feature.get("preprocessing") or {}).get("fallback_label")
    if feature["type"] != "category" or decoder.get("label_scoring") or decoder.get("constrain_to_vocabulary"):
        return
    if fallback is not None and str(fallback) in [str(label) for label in decoder.get("match") or {}]:
        yield ConfigWarning("output_features[0].preprocessing.fallback_label",
                            f"{shown(fallback)} is one of the labels, so a generation that names no label counts as "
                            f"{shown(fallback)} and can look right: accuracy then hides failures (fw evaluate reports "
                            "the fallback_rate).",
                            "use a value that is no label, or decoder.label_scoring / constrain_to_vocabulary, "
                            "which always give a label")


@rule("prompt")
def chat_keys_need_a_chat_template(config: Config, registry: Registry) -> Iterator[ConfigIssue]:
    """prompt.system_message / train_on only act through a chat template (fw.data.chat)."""
    prompt = config["prompt"]
    if prompt.get("chat_template"):
        return
    if prompt.get("system_message") is not None:
        yield ConfigIssue("prompt.system_message", "is a chat message, but prompt.chat_template is off.",
                          "set prompt.chat_template: true (or a template), or put the text in prompt.template")
    if prompt.get("train_on") == "last_assistant_turn":
        yield ConfigWarning("prompt.train_on", "applies to conversations, which need prompt.chat_template; "
                                               "without it the loss covers the target as always.")
