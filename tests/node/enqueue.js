// Enqueue one catfleet message with nothing but the stock `redis` client (README "Wire format").
// usage: node enqueue.js REDIS_URL NAMESPACE PAYLOAD_JSON [QUEUE ACTOR]
// Prints the message id.
const { randomUUID } = require("node:crypto");
const { createClient } = require("redis");

async function main() {
  const [url, ns, payloadJson, queue = "categorize", actor = "categorize_batch"] = process.argv.slice(2);
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
  console.log(message.message_id);
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
