package example;

import java.time.LocalDate;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.SplittableRandom;
import java.util.TreeMap;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import java.util.stream.Collectors;

/**
 * An inventory service whose static init builds everything it answers from:
 * 200,000 items, an index by SKU, per-warehouse lists sorted by value and
 * per-day movement totals. Events: {"sku": ...}, {"warehouse": n} or
 * {"day": "YYYY-MM-DD"}.
 */
public final class Inventory {
    static final int ITEMS = 200_000;
    static final int WAREHOUSES = 16;

    static final class Item {
        final String sku;
        final int warehouse;
        final int quantity;
        final long priceCents;
        final LocalDate restocked;

        Item(String sku, int warehouse, int quantity, long priceCents, LocalDate restocked) {
            this.sku = sku;
            this.warehouse = warehouse;
            this.quantity = quantity;
            this.priceCents = priceCents;
            this.restocked = restocked;
        }

        long value() {
            return quantity * priceCents;
        }

        String json() {
            return String.format("{\"sku\": \"%s\", \"warehouse\": %d, \"quantity\": %d, \"price\": %d.%02d, \"restocked\": \"%s\"}",
                    sku, warehouse, quantity, priceCents / 100, priceCents % 100, restocked);
        }
    }

    static final Map<String, Item> BY_SKU = new HashMap<>(ITEMS * 2);
    static final List<List<Item>> BY_WAREHOUSE = new ArrayList<>();
    static final TreeMap<LocalDate, Long> RESTOCKED_PER_DAY = new TreeMap<>();
    static final long INIT_MS;
    static final Pattern FIELD = Pattern.compile("\"(sku|warehouse|day)\"\\s*:\\s*\"?([A-Za-z0-9-]+)\"?");

    static {
        long t0 = System.nanoTime();
        SplittableRandom rnd = new SplittableRandom(42); // the same inventory on every boot
        LocalDate start = LocalDate.of(2026, 1, 1);
        List<Item> all = new ArrayList<>(ITEMS);
        for (int i = 0; i < ITEMS; i++) {
            Item it = new Item(String.format("SKU-%07d", i), rnd.nextInt(WAREHOUSES), rnd.nextInt(1000),
                    100 + rnd.nextInt(100_000), start.plusDays(rnd.nextInt(365)));
            all.add(it);
            BY_SKU.put(it.sku, it);
        }
        Map<Integer, List<Item>> grouped = all.stream().collect(Collectors.groupingBy(it -> it.warehouse));
        for (int w = 0; w < WAREHOUSES; w++) {
            List<Item> list = new ArrayList<>(grouped.getOrDefault(w, List.of()));
            list.sort(Comparator.comparingLong(Item::value).reversed().thenComparing(it -> it.sku));
            BY_WAREHOUSE.add(list);
        }
        for (Item it : all) RESTOCKED_PER_DAY.merge(it.restocked, (long) it.quantity, Long::sum);
        INIT_MS = (System.nanoTime() - t0) / 1_000_000;
        System.out.println("inventory of " + ITEMS + " items built in " + INIT_MS + " ms");
    }

    private Inventory() {}

    public static String handle(String event) {
        Matcher m = FIELD.matcher(event);
        if (!m.find()) {
            return "{\"error\": \"send {\\\"sku\\\": ...}, {\\\"warehouse\\\": n} or {\\\"day\\\": \\\"YYYY-MM-DD\\\"}\", \"init_ms\": " + INIT_MS + "}";
        }
        switch (m.group(1)) {
            case "sku": {
                Item it = BY_SKU.get(m.group(2));
                return it == null ? "{\"error\": \"no such sku\"}" : it.json();
            }
            case "warehouse": {
                List<Item> list = BY_WAREHOUSE.get(Integer.parseInt(m.group(2)) % WAREHOUSES);
                return list.stream().limit(3).map(Item::json).collect(Collectors.joining(", ", "[", "]"));
            }
            default: {
                LocalDate day = LocalDate.parse(m.group(2), DateTimeFormatter.ISO_LOCAL_DATE);
                return "{\"day\": \"" + day + "\", \"restocked\": " + RESTOCKED_PER_DAY.getOrDefault(day, 0L) + "}";
            }
        }
    }
}
