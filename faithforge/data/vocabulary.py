"""The one vocabulary of FaithForge's synthetic tasks: the toy summaries (`teacher.py`) and the real model's
grounded-qa questions (`grounded_qa.py`) draw their people, places, days, items, counts and actions from here.

Names and places are single capitalized words that are unambiguous as names (a judge must be able to tell an
invented place from an ordinary word: `Nantes`, not `Split`); days are weekdays. Counts are numbers (each task
writes them as text its own way); actions are (past, base) verb pairs: "Ada sold 3 lamps." / "What did Ada sell?".
"""

from __future__ import annotations

NAMES = ("Ada", "Bruno", "Chen", "Dara", "Emil", "Farah", "Goran", "Hana", "Ivo", "Jana", "Kofi", "Lena",
         "Mateo", "Nia", "Omar", "Petra", "Quinn", "Rosa", "Sami", "Tomas", "Uma", "Vera", "Wim", "Yara")
PLACES = ("Oslo", "Lima", "Porto", "Kyoto", "Dakar", "Quito", "Riga", "Turin", "Hanoi", "Leeds", "Perth",
          "Bergen", "Malmo", "Cusco", "Nantes", "Ghent", "Izmir", "Tartu", "Lyon", "Graz")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
ITEMS = ("lamps", "chairs", "books", "kettles", "clocks", "rugs", "vases", "bikes", "maps", "mugs",
         "boots", "hats", "drums", "kites", "pens", "plates")
COUNTS: tuple[int, ...] = tuple(range(2, 13))
VERBS: tuple[tuple[str, str], ...] = (("bought", "buy"), ("sold", "sell"), ("repaired", "repair"),
                                      ("painted", "paint"), ("delivered", "deliver"), ("ordered", "order"))
