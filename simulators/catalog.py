"""The shop's assortment: categories, SKUs with prices and popularity, stock sizing.

Popularity inside a category is Zipf-like, so a few hot SKUs take most views (and
run out first). Stock is sized in days of cover of expected demand; a few SKUs
are kept thin so a normal day has the odd stockout (PLAYBOOK: under 1%).
"""

from __future__ import annotations

import math
from bisect import bisect
from dataclasses import dataclass
from itertools import accumulate
from random import Random

from simulators.profile import ShopProfile
from state.serde import dumps


@dataclass(frozen=True)
class Category:
    name: str
    mean_price: float  # CNY
    view_share: float  # share of product views
    queries: tuple[str, ...]
    high_value: bool = False  # what stolen cards and takeovers go for


CATEGORIES: tuple[Category, ...] = (
    Category("electronics", 1200.0, 0.12, ("手机", "耳机", "iphone", "充电宝", "平板", "laptop"), True),
    Category("appliances", 900.0, 0.06, ("空调", "冰箱", "洗衣机", "扫地机器人"), True),
    Category("apparel", 180.0, 0.17, ("连衣裙", "羽绒服", "sneakers", "卫衣", "牛仔裤")),
    Category("beauty", 220.0, 0.12, ("口红", "面膜", "精华", "防晒")),
    Category("home", 120.0, 0.10, ("四件套", "收纳", "枕头", "毛巾")),
    Category("food", 60.0, 0.12, ("零食", "坚果", "咖啡", "牛奶")),
    Category("baby", 150.0, 0.06, ("纸尿裤", "奶粉", "婴儿车")),
    Category("sports", 260.0, 0.06, ("跑鞋", "瑜伽垫", "羽毛球拍")),
    Category("books", 45.0, 0.04, ("小说", "教材", "绘本")),
    Category("toys", 130.0, 0.05, ("乐高", "积木", "盲盒")),
    Category("jewelry", 800.0, 0.03, ("黄金", "项链", "手表"), True),
    Category("pets", 90.0, 0.05, ("猫粮", "狗粮", "猫砂")),
    Category("virtual", 20.0, 0.02, ("话费充值", "礼品卡", "gift card")),
)
VIRTUAL = len(CATEGORIES) - 1  # gift cards and top-ups: what card testers buy
_VIRTUAL_PRICES = (1.0, 2.0, 5.0, 6.0, 10.0, 20.0, 30.0, 50.0, 100.0)
_VIRTUAL_STOCK = 1_000_000  # digital codes; never the reason a cart fails

# Category taste per shopper segment (multipliers on view share).
SEGMENT_TASTE: dict[str, dict[str, float]] = {
    "price_sensitive": {"food": 1.8, "home": 1.5, "apparel": 1.3, "baby": 1.4, "pets": 1.4,
                        "books": 1.3, "electronics": 0.3, "appliances": 0.25, "jewelry": 0.15},
    "quality": {"electronics": 1.6, "appliances": 1.6, "beauty": 1.3, "jewelry": 1.6,
                "sports": 1.3, "food": 0.5, "books": 0.8, "toys": 0.7},
    "impulse": {"apparel": 1.6, "beauty": 1.6, "toys": 1.7, "food": 1.2, "electronics": 0.6,
                "appliances": 0.3, "jewelry": 0.5},
}

WAREHOUSES = ("wh-east", "wh-south", "wh-north", "wh-west", "wh-central")


class Sku:
    """One product; immutable after the catalog is built (stock lives in `inventory`)."""

    __slots__ = ("id", "key", "category", "category_index", "price", "pool", "popularity",
                 "warehouse", "initial_stock", "safety_stock", "json")

    def __init__(self, id: str, category: Category, category_index: int, price: float, pool: str,
                 popularity: float, warehouse: str):
        self.id = id
        self.key = id.encode()
        self.category = category.name
        self.category_index = category_index
        self.price = price
        self.pool = pool
        self.popularity = popularity  # share of all product views
        self.warehouse = warehouse
        self.initial_stock = 0
        self.safety_stock = 0
        # The click-event fields for this SKU, pre-rendered: clicks are built as JSON text.
        self.json = dumps({"sku": id, "category": category.name, "price": price}).decode()[1:-1]


class Catalog:
    def __init__(self, profile: ShopProfile, rng: Random, sessions_per_day: float):
        total_share = sum(c.view_share for c in CATEGORIES)
        self.skus: list[Sku] = []
        self.by_category: list[list[Sku]] = []
        self._cum_popularity: list[list[float]] = []
        for index, category in enumerate(CATEGORIES):
            count = max(5, round(profile.catalog_size * category.view_share / total_share))
            ranks = [1.0 / (rank + 1) for rank in range(count)]  # Zipf, exponent 1
            norm = sum(ranks)
            skus = []
            for rank in range(count):
                if index == VIRTUAL:
                    price = _VIRTUAL_PRICES[rank % len(_VIRTUAL_PRICES)]
                else:
                    raw = rng.lognormvariate(math.log(category.mean_price) - 0.18, 0.6)
                    price = max(1.9, float(round(raw))) - 0.1  # shop prices end in .9
                presale = index != VIRTUAL and rank > 2 and rng.random() < profile.presale_sku_share
                sku = Sku(
                    id=f"sku-{len(self.skus):05d}",
                    category=category,
                    category_index=index,
                    price=round(price, 2),
                    pool="presale" if presale else "spot",
                    popularity=category.view_share / total_share * ranks[rank] / norm,
                    warehouse=WAREHOUSES[int(rng.random() * len(WAREHOUSES))],
                )
                skus.append(sku)
                self.skus.append(sku)
            self.by_category.append(skus)
            self._cum_popularity.append(list(accumulate(s.popularity for s in skus)))
        self._size_stock(profile, rng, sessions_per_day)
        self.segment_taste = {
            segment: list(accumulate(c.view_share * taste.get(c.name, 1.0) for c in CATEGORIES))
            for segment, taste in SEGMENT_TASTE.items()
        }
        self.high_value = [i for i, c in enumerate(CATEGORIES) if c.high_value]
        self.query_json = [tuple(dumps(q).decode() for q in c.queries) for c in CATEGORIES]
        # Hot spot SKUs: what flash sales feature.
        self.hot = sorted(
            (s for s in self.skus if s.pool == "spot" and s.category_index != VIRTUAL),
            key=lambda s: -s.popularity,
        )[:20]
        self.mean_item_price = sum(s.price * s.popularity for s in self.skus) / sum(
            s.popularity for s in self.skus
        )
        high = [s for i in self.high_value for s in self.by_category[i]]
        self.mean_high_value_price = sum(s.price for s in high) / len(high)

    def _size_stock(self, profile: ShopProfile, rng: Random, sessions_per_day: float) -> None:
        units_per_day = sessions_per_day * profile.conversion * profile.units_per_order
        low, high = profile.stock_cover_days
        for sku in self.skus:
            if sku.category_index == VIRTUAL:
                sku.initial_stock, sku.safety_stock = _VIRTUAL_STOCK, 0
                continue
            demand = units_per_day * sku.popularity
            if rng.random() < profile.thin_stock_share:
                cover = 0.2 + rng.random() * 0.8
            else:
                cover = low + rng.random() * (high - low)
            sku.initial_stock = max(3, math.ceil(demand * cover))
            lead_days = profile.restock_lead_median_h / 24
            sku.safety_stock = max(1, math.ceil(demand * lead_days * 1.5))

    def pick(self, category_index: int, r: float) -> Sku:
        """The SKU at popularity quantile `r` (0 <= r < 1) inside a category."""
        cum = self._cum_popularity[category_index]
        return self.by_category[category_index][bisect(cum, r * cum[-1])]

    def pick_category(self, segment: str, r: float) -> int:
        cum = self.segment_taste[segment]
        return bisect(cum, r * cum[-1])
