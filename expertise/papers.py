"""The papers this project implements, by the numbers its docstrings cite them with ("paper 000,
section 4.3"): the file names of ``shared/papers/`` in the project's workspace. Their text is read
for facts, formulas and protocols; the code and documents are the project's own.

``python -m expertise.papers`` prints the list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Paper:
    number: str
    title: str
    authors: str
    venue: str
    what: str  # what the project takes from it

    def cite(self) -> str:
        return f"{self.authors}, \u201c{self.title}\u201d, {self.venue}"


PAPERS: dict[str, Paper] = {p.number: p for p in (
    Paper("000", "Scalable Transfer Learning with Expert Models",
          "Joan Puigcerver, Carlos Riquelme, Basil Mustafa, Cedric Renggli, Andr\u00e9 Susano Pinto, Sylvain Gelly, "
          "Daniel Keysers, Neil Houlsby", "ICLR 2021",
          "the whole pipeline: the baseline B, experts on label-hierarchy slices (full networks and residual "
          "adapters), expert selection (kNN leave-one-out, domain prediction with the EPN, label matching), "
          "fine-tuning, the VTAB-1k protocol, Tables 1-3"),
    Paper("001", "Scalable Transfer Learning with Expert Models (abstract and introduction only)",
          "the authors of 000", "ICLR 2021", "nothing beyond 000"),
    Paper("002", "Which Model to Transfer? Finding the Needle in the Growing Haystack",
          "Cedric Renggli, Andr\u00e9 Susano Pinto, Luka Rimanic, Joan Puigcerver, Carlos Riquelme, Ce Zhang, "
          "Mario Lucic", "the anonymous ICLR 2021 submission (published at CVPR 2022)",
          "model search over heterogeneous pools: task-agnostic and task-aware (linear, kNN) strategies, the "
          "hybrid strategy, the budget, regret (eq. 1-2), model pools, picks-vs-budget curves"),
    Paper("003", "Domain Adaptive Transfer Learning with Specialist Models",
          "Jiquan Ngiam, Daiyi Peng, Vijay Vasudevan, Simon Kornblith, Quoc V. Le, Ruoming Pang", "arXiv 2018",
          "domain adaptive transfer: importance weights p_t(y)/p_s(y) with a temperature, the same-distribution "
          "and elastic samplers, specialist pre-training, the weighting ablation (Table 6)"),
)}


def main() -> None:
    for p in PAPERS.values():
        print(f"paper {p.number}: {p.cite()}\n    {p.what}")


if __name__ == "__main__":
    main()
