// A real Yjs peer for the interop tests: y-websocket's WebsocketProvider (pinned in
// tests/package.json) joins a room, reports what Python wrote, writes a task and a counter
// slot exactly as docs/schema.md describes, and waits for Python to acknowledge it.
// Usage: node yjs_client.mjs URL ROOM TOKEN ACK_TASK_ID
// Output lines: SYNCED {tasks, counters} / WROTE <clientID> / ACKED {task} (exit 0);
// CLOSED <code> for every closed connection; after a permanent refusal (close 4400-4499,
// y-websocket then stops reconnecting) it watches for LINGER_MS more, prints
// STOPPED {code, closes, opens} and exits 4; TIMEOUT and exit 3 after 30 s.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [url, room, token, ackId] = process.argv.slice(2)
const doc = new Y.Doc()
const params = token ? { token } : {}
const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, params, disableBc: true })
const deadline = setTimeout(() => { console.log('TIMEOUT'); process.exit(3) }, 30000)

const plain = (value) => (value instanceof Y.Map ? Object.fromEntries([...value.entries()].map(([k, v]) => [k, plain(v)])) : value)
const tasks = () => Object.fromEntries([...doc.getMap('tasks').entries()].map(([id, t]) => [id, plain(t)]))

const LINGER_MS = 1500 // y-websocket would retry after 200, 400, 800 ms: long enough to see a loop
let wrote = false
let closes = 0
let opens = 0
provider.on('status', ({ status }) => { if (status === 'connected') opens++ })
provider.on('connection-close', (event) => { closes++; if (event) console.log('CLOSED ' + event.code) })
provider.on('closed', ({ code }) => {
  setTimeout(() => {
    console.log('STOPPED ' + JSON.stringify({ code, closes, opens, shouldConnect: provider.shouldConnect }))
    clearTimeout(deadline)
    provider.destroy()
    process.exit(4)
  }, LINGER_MS)
})
provider.on('sync', (synced) => {
  if (!synced || wrote) return
  wrote = true
  console.log('SYNCED ' + JSON.stringify({ tasks: tasks(), counters: doc.getMap('counters').toJSON() }))
  const now = new Date().toISOString()
  doc.transact(() => {
    const task = new Y.Map()
    doc.getMap('tasks').set('T-js-1', task)
    task.set('title', 'Written from JavaScript: ünïcödé ✓')
    task.set('description', 'by y-websocket')
    task.set('status', 'in_progress')
    task.set('priority', 'high')
    task.set('owner', 'js-agent')
    task.set('created_at', now)
    task.set('updated_at', now)
    task.set('created_by', 'js-client')
    const tags = new Y.Map()
    task.set('tags', tags)
    tags.set('interop', true)
    task.set('depends_on', new Y.Map())
    const props = new Y.Map()
    task.set('properties', props)
    props.set('attempts', 2)
    const counters = doc.getMap('counters')
    const slot = `builds|${doc.clientID}`
    const prev = counters.get(slot) || { p: 0, n: 0 }
    counters.set(slot, { p: prev.p + 5, n: prev.n + 1 })
  })
  console.log('WROTE ' + doc.clientID)
})

doc.getMap('tasks').observe(() => {
  if (doc.getMap('tasks').has(ackId)) {
    console.log('ACKED ' + JSON.stringify(tasks()[ackId]))
    clearTimeout(deadline)
    provider.destroy()
    process.exit(0)
  }
})
