// Enqueue one catfleet message with nothing but the stock `redis` client (README "Wire format").
// usage: node enqueue.js REDIS_URL NAMESPACE PAYLOAD_JSON [QUEUE ACTOR [ENVELOPE_PATCH_JSON]]
// ENVELOPE_PATCH_JSON (tests: a wrong envelope) is merged into the envelope; a null value
// removes that field. Prints {"message_id": ..., "redis_message_id": ...} as JSON.
const { randomUUID } = require("node:crypto");
const { createClient } = require("redis");

async function main() {
  const [url, ns, payloadJson, queue = "categorize", actor = "categorize_batch", patchJson = "{}"] =
    process.argv.slice(2);
  const rid = randomUUID(); // Redis message id: the hash field and the list entry
  const message = {
    queue_name: queue,
    actor_name: actor,
    args: [JSON.parse(payloadJson)],
    kwargs: {},
    options: { redis_message_id: rid },
    message_id: randomUUID(),
    message_timestamp: Date.now(),
  };
  for (const [field, value] of Object.entries(JSON.parse(patchJson))) {
    if (value === null) delete message[field];
    else message[field] = value;
  }
  const client = createClient({ url });
  await client.connect();
  try {
    await client
      .multi()
      .hSet(`${ns}:${queue}.msgs`, rid, JSON.stringify(message))
      .rPush(`${ns}:${queue}`, rid)
      .exec();
  } finally {
    await client.quit();
  }
  console.log(JSON.stringify({ message_id: message.message_id ?? null, redis_message_id: rid }));
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
