"""Solutions to the exercises of chapter 11 (distributed training). Try them yourself first: nbs/3_pretraining/11_distributed.ipynb."""
import torch


def my_ring_all_reduce(x, rank, world, send, recv):
    "The sum of x over all ranks, by the ring algorithm: N-1 reduce-scatter steps, then N-1 all-gather steps."
    chunks = list(x.detach().clone().reshape(-1).tensor_split(world))   # work on a copy, cut into N chunks
    right, left = (rank + 1) % world, (rank - 1) % world
    for s in range(world - 1):
        # reduce-scatter: pass chunk (rank - s) right, add the incoming chunk (rank - s - 1) from the left
        send(chunks[(rank - s) % world], right)
        buf = torch.empty_like(chunks[(rank - s - 1) % world]); recv(buf, left)
        chunks[(rank - s - 1) % world] += buf
    # now chunk (rank + 1) is complete here; all-gather passes the complete chunks around the ring
    for s in range(world - 1):
        send(chunks[(rank + 1 - s) % world], right)
        recv(chunks[(rank - s) % world], left)
    return torch.cat(chunks).reshape(x.shape)


def my_zero1_sgd_step(param, grad, momentum, rank, world, all_gather, lr, mu):
    "The full updated parameter vector after one ZeRO-1 momentum-SGD step."
    k = param.numel() // world
    lo, hi = rank * k, (rank + 1) * k                  # my slice of the flat vector
    momentum.mul_(mu).add_(grad[lo:hi])                # I keep only my slice of the optimizer state
    new_slice = param[lo:hi] - lr * momentum           # and update only my slice of the parameters
    return torch.cat(all_gather(new_slice))            # every rank's slice, in rank order


def my_1f1b_schedule(stage, stages, micro):
    "Stage `stage`'s 1F1B order: p-1-stage warm-up forwards, then one forward / one backward, then the last backwards."
    warm = min(stages - stage - 1, micro)        # the last stage needs none: its backward can follow each forward at once
    order = [('F', i) for i in range(warm)]
    f = warm                                     # next forward to run
    for b in range(micro):                       # every backward in order, each preceded by one more forward while any are left
        if f < micro:
            order.append(('F', f)); f += 1
        order.append(('B', b))
    return order


CHECKS = {'my_ring_all_reduce': 'llm_lab.distributed:check_ring_all_reduce',
          'my_zero1_sgd_step': 'llm_lab.distributed:check_zero1_step',
          'my_1f1b_schedule': 'llm_lab.distributed:check_1f1b_schedule'}
