"""text_extractor: the output value is the generated text itself (the default decoder of text outputs)."""
from fw.plugin import DecodedOutputs, DecoderPlugin, hookimpl


@hookimpl
def fw_decoders():
    return [DecoderPlugin(name="text_extractor", schema="fw.schemas:decoders/text_extractor.json",
                          summary="The generated text as the output value", decode=f"{__name__}:decode",
                          output_types=("text",))]


def decode(texts: list[str], config: dict) -> DecodedOutputs:
    return DecodedOutputs(list(texts))
