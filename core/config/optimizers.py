"""Where each optimizer of ``trainer.optimizer.type`` comes from: Ludwig's name -> the maintained implementation.

torch.optim, bitsandbytes for the 8-bit and paged variants and lamb / lars / lion, transformers' Adafactor,
schedulefree. The config rules read it to name a package that is missing here; the trainer
(:mod:`fw.train.optim`) imports the class from it.
"""
from __future__ import annotations

#: Ludwig's optimizer name -> (module, class, pip package)
OPTIMIZERS = {
    "sgd": ("torch.optim", "SGD", "torch"), "adam": ("torch.optim", "Adam", "torch"),
    "adamw": ("torch.optim", "AdamW", "torch"), "adadelta": ("torch.optim", "Adadelta", "torch"),
    "adagrad": ("torch.optim", "Adagrad", "torch"), "adamax": ("torch.optim", "Adamax", "torch"),
    "nadam": ("torch.optim", "NAdam", "torch"), "rmsprop": ("torch.optim", "RMSprop", "torch"),
    "radam": ("torch.optim", "RAdam", "torch"),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers"),
    "schedule_free_adamw": ("schedulefree", "AdamWScheduleFree", "schedulefree"),
    **{name: ("bitsandbytes.optim", cls, "bitsandbytes") for name, cls in (
        ("sgd_8bit", "SGD8bit"), ("adam_8bit", "Adam8bit"), ("paged_adam", "PagedAdam"),
        ("paged_adam_8bit", "PagedAdam8bit"), ("adamw_8bit", "AdamW8bit"), ("paged_adamw", "PagedAdamW"),
        ("paged_adamw_8bit", "PagedAdamW8bit"), ("adagrad_8bit", "Adagrad8bit"), ("rmsprop_8bit", "RMSprop8bit"),
        ("lamb", "LAMB"), ("lamb_8bit", "LAMB8bit"), ("lars", "LARS"), ("lars_8bit", "LARS8bit"),
        ("lion", "Lion"), ("lion_8bit", "Lion8bit"), ("paged_lion", "PagedLion"),
        ("paged_lion_8bit", "PagedLion8bit"))},
}
