// A catalogue API whose init builds its data and routes up front: a
// 200,000-row table with per-category indexes and a router of 2,000 routes
// compiled to regular expressions, as web frameworks do at start-up.
import thaw from 'thaw';

const t0 = performance.now();

const COLOURS = ['red', 'blue', 'green', 'black', 'white', 'grey', 'yellow', 'purple'];
const CATEGORIES = 64;
const ROWS = 200_000;

// A small deterministic generator, so every boot builds the same catalogue.
let state = 0x9e3779b9;
function next() {
  state ^= state << 13;
  state ^= state >>> 17;
  state ^= state << 5;
  return (state >>> 0) / 4294967296;
}

const products = new Array(ROWS);
const byCategory = Array.from({ length: CATEGORIES }, () => []);
const bySku = new Map();
const words = new Map();
for (let i = 0; i < ROWS; i++) {
  const colour = COLOURS[Math.floor(next() * COLOURS.length)];
  const p = {
    sku: `sku-${String(i).padStart(6, '0')}`,
    name: `${colour} item ${i}`,
    category: Math.floor(next() * CATEGORIES),
    price: Math.round(next() * 100_000) / 100,
    rating: Math.round(next() * 50) / 10,
  };
  products[i] = p;
  byCategory[p.category].push(p);
  bySku.set(p.sku, p);
  for (const w of p.name.split(' ')) {
    let list = words.get(w);
    if (!list) words.set(w, (list = []));
    if (list.length < 1000) list.push(i);
  }
}
for (const list of byCategory) list.sort((a, b) => b.rating - a.rating || a.price - b.price);

// The router: patterns like /v3/orders/:id/items compiled to regexes.
const routes = [];
function route(pattern, fn) {
  const names = [];
  const source = pattern.replace(/:([a-z]+)/g, (_, n) => {
    names.push(n);
    return '([^/]+)';
  });
  routes.push({ re: new RegExp(`^${source}$`), names, fn });
}
for (let v = 1; v <= 499; v++) {
  for (const res of ['orders', 'users', 'carts', 'invoices']) {
    route(`/v${v}/${res}/:id`, (params) => ({ resource: res, version: v, id: params.id }));
  }
}
route('/products/:sku', ({ sku }) => bySku.get(sku) || thaw.response({ error: 'no such product' }, { status: 404 }));
route('/categories/:id/top', ({ id }, event) => byCategory[Number(id) % CATEGORIES].slice(0, event.limit || 5));
route('/search', (_, event) => (words.get(event.q) || []).slice(0, 10).map((i) => products[i]));

export const initMs = Math.round(performance.now() - t0);
console.log(`catalogue of ${ROWS} products and ${routes.length} routes built in ${initMs} ms`);

let served = 0;
thaw.onRestore(() => {
  served = 0;
});

export async function handler(event) {
  const path = (event && event.path) || '/';
  for (const r of routes) {
    const m = r.re.exec(path);
    if (m) {
      served += 1;
      const params = Object.fromEntries(r.names.map((n, i) => [n, m[i + 1]]));
      return r.fn(params, event);
    }
  }
  return thaw.response({ error: `no route for ${path}`, routes: routes.length, init_ms: initMs, served }, { status: 404 });
}
