// Hello world for thaw on Node.js: greets `event.name` and shows the context,
// a counter the warm-up advances, a timer that keeps ticking between
// invocations, and values that must differ in every restored copy.
const crypto = require('crypto');
const thaw = require('thaw');

const GREETING = process.env.GREETING || 'hello';
let invocations = 0;
let ticks = 0;
setInterval(() => {
  ticks += 1;
}, 50);

let restores = 0;
thaw.onRestore(() => {
  restores += 1;
});

exports.handler = async (event, context) => {
  invocations += 1;
  console.log(`greeting ${event && event.name}`);
  return {
    [GREETING]: (event && event.name) || 'world',
    invocation_id: context.invocationId,
    function: context.function,
    version: context.version,
    remaining_ms: context.remainingMs(),
    invocations,
    ticks,
    restores,
    restored_copy: thaw.isCopy(),
    random: Math.random(),
    random_bytes: crypto.randomBytes(16).toString('hex'),
    uuid: crypto.randomUUID(),
  };
};
