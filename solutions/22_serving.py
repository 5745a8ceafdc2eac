"""Solutions to the exercises of chapter 22 (serving). Try them yourself first: nbs/8_money/22_serving.ipynb."""
import torch


def my_append_slots(block_table, length, n, block_size, free_blocks):
    "Physical slots of tokens length..length+n-1; new blocks popped from free_blocks and appended to block_table."
    blocks_needed = -(-(length + n) // block_size)            # ceil: blocks that hold length + n tokens
    new = blocks_needed - len(block_table)
    if new > len(free_blocks):                                # check before touching anything
        raise MemoryError(f"{new} blocks needed, {len(free_blocks)} free")
    for _ in range(max(new, 0)):
        block_table.append(free_blocks.pop())
    slots = []
    for p in range(length, length + n):
        block, offset = block_table[p // block_size], p % block_size   # logical block -> physical block
        slots.append(block * block_size + offset)
    return slots


def my_accept_or_resample(p, q, x, u, generator=None):
    "(True, x) if u < p[x]/q[x], else (False, a token sampled from max(p - q, 0) normalised)."
    if u * q[x] < p[x]:                                       # u < p[x]/q[x], safe when q[x] == 0
        return True, x
    residual = torch.clamp(p - q, min=0)                      # where the target wants more than the draft gave
    residual = residual / residual.sum()
    return False, int(torch.multinomial(residual, 1, generator=generator))


def my_schedule_step(running, waiting, max_batch, free_blocks):
    "Retire finished requests, then admit waiting ones FIFO while a slot and their blocks are free."
    retired = [r['id'] for r in running if r['done']]
    free = free_blocks + sum(r['blocks'] for r in running if r['done'])   # retire first: their blocks come back
    still = [r['id'] for r in running if not r['done']]
    admitted = []
    for r in waiting:
        if len(still) + len(admitted) == max_batch or r['blocks'] > free:
            break                                             # first come, first served: nobody overtakes
        admitted.append(r['id'])
        free -= r['blocks']
    return {'running': still + admitted, 'retired': retired, 'admitted': admitted, 'free_blocks': free}


CHECKS = {'my_append_slots': 'llm_lab.serve:check_append_slots',
          'my_accept_or_resample': 'llm_lab.serve:check_accept_or_resample',
          'my_schedule_step': 'llm_lab.serve:check_schedule_step'}
