"""The hop from a front to the handler, through TorchServe: what travels besides the body.

A front names the verb in a request header, when it sent the request, the client's deadline and the
request's id; the handler names the version that answered and its task in response headers, how long its
batch took for how many instances, how long the request waited for its batch, and a failed request's kind
(`Failure`) in one more, with an HTTP status TorchServe can carry. Both sides read these names and this
table, so the hop says one thing each way. Times are seconds since the epoch: the fronts and the workers need not share a clock other than the machine's.
"""

from __future__ import annotations

from .errors import HTTP_STATUS, Failure

VERB_HEADER = "x-fastai-serving-verb"  # the TF Serving verb (default: predict)
VERSION_HEADER = "x-fastai-serving-model-version"  # the TorchServe version that answered
TASK_HEADER = "x-fastai-serving-task"  # its task
FAILURE_HEADER = "x-fastai-serving-failure"  # a failed request's kind, Failure's value
SENT_AT_HEADER = "x-fastai-serving-sent-at"  # when the front sent the request (the queue's wait counts from it)
DEADLINE_HEADER = "x-fastai-serving-deadline"  # the client's deadline: an answer after it is wanted by no one
BATCH_SECONDS_HEADER = "x-fastai-serving-batch-seconds"  # how long the handler took for the batch that answered
BATCH_INSTANCES_HEADER = "x-fastai-serving-batch-instances"  # and how many instances that batch predicted
FORWARD_INSTANCES_HEADER = "x-fastai-serving-forward-instances"  # instances the handler puts in one forward pass
REQUEST_ID_HEADER = "x-request-id"  # the request's id (request_ids.py): what its log lines quote
QUEUE_SECONDS_HEADER = "x-fastai-serving-queue-seconds"  # how long it waited from its sending to its batch's start


def failure_of(header: str | None, status: int) -> Failure:
    """A handler's failed answer's kind: its header, or (a handler older than the header) its status."""
    if header:
        try:
            return Failure(header)
        except ValueError:
            pass
    by_status = {status: failure for failure, status in HTTP_STATUS.items() if failure is not Failure.REFUSED}
    return by_status.get(status, Failure.BAD_INPUT if 400 <= status < 500 else Failure.MODEL_FAILED)
