"""random: few-shot examples drawn at random from the training set (``prompt.retrieval.type: random``)."""
from fw.hookspecs import hookimpl
from fw.types import RetrieverPlugin

#: the planned work that builds retrieval
AREA = "issue 'Generation, category extraction, ... retrieval'"
SCHEMA = "fw.schemas:retrievers/random.json"


@hookimpl
def fw_retrievers():
    return [RetrieverPlugin(name="random", schema=SCHEMA,
                            summary="k random training rows as few-shot examples",
                            build_index=f"{__name__}:build_index")]


def build_index(params: dict, train_rows, cache_dir):
    """Index the training rows; ``.query(row, k)`` returns k random examples. Not built yet."""
    from fw.errors import NotBuiltYetError

    raise NotBuiltYetError("random few-shot retrieval", AREA)
