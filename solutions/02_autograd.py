"""Solutions to the exercises of chapter 02 (Autograd from scratch), nbs/1_foundations/02_autograd.ipynb.

Each function has the name of the stub it solves; `CHECKS` maps it to its checker in `llm_lab.autograd`.
Try the exercise before reading on."""
import math

from llm_lab.autograd import Value

CHECKS = {
    'my_exp': 'llm_lab.autograd:check_value_op',
    'my_log': 'llm_lab.autograd:check_value_op',
    'my_tanh': 'llm_lab.autograd:check_value_op',
    'my_div': 'llm_lab.autograd:check_value_op',
    'my_topological_order': 'llm_lab.autograd:check_topological_order',
    'my_backward': 'llm_lab.autograd:check_backward',
}


def my_exp(a: Value) -> Value:
    "e^a: the local derivative is e^a itself, which we keep from the forward pass."
    e = math.exp(a.data)
    out = Value(e, (a,), 'exp')
    def _backward(grad): a.grad += e * grad  # +=: a may feed several nodes
    out._backward = _backward
    return out


def my_log(a: Value) -> Value:
    "log a, for a > 0: the local derivative is 1/a."
    if a.data <= 0: raise ValueError(f"log needs a positive input, got {a.data}")
    out = Value(math.log(a.data), (a,), 'log')
    def _backward(grad): a.grad += grad / a.data
    out._backward = _backward
    return out


def my_tanh(a: Value) -> Value:
    "tanh a: the local derivative 1 - tanh² a is written with the output."
    t = math.tanh(a.data)
    out = Value(t, (a,), 'tanh')
    def _backward(grad): a.grad += (1 - t * t) * grad
    out._backward = _backward
    return out


def my_div(a: Value, b: Value) -> Value:
    "a / b as one node: d/da = 1/b, d/db = -a/b²."
    out = Value(a.data / b.data, (a, b), '/')
    def _backward(grad):
        a.grad += grad / b.data
        b.grad += -a.data / b.data ** 2 * grad
    out._backward = _backward
    return out


def my_topological_order(root: Value) -> list:
    "Post-order depth-first search with an explicit stack: a node is appended after all of its inputs."
    order, seen, stack = [], set(), [(root, False)]
    while stack:
        node, inputs_done = stack.pop()
        if inputs_done:
            order.append(node)  # all of its inputs are already in `order`
            continue
        if node in seen: continue  # a shared sub-expression, reached along a second path
        seen.add(node)
        stack.append((node, True))  # come back to it once its inputs are done
        stack.extend((child, False) for child in node._prev)
    return order


def my_backward(root: Value) -> None:
    "Seed d root/d root = 1, then run each node's _backward once, from the root towards the leaves."
    order = my_topological_order(root)
    root.grad = 1.0
    for node in reversed(order):  # reversed: every node after all the nodes that use it
        node._backward(node.grad)
