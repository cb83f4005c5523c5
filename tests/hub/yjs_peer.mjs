// A plain Yjs client for the hub tests: y-websocket's WebsocketProvider joins ROOM at URL,
// writes probe[WRITE] = "from-<WRITE>" once synced, and waits until probe[WAIT] exists.
// Usage: node yjs_peer.mjs URL ROOM TOKEN WRITE WAIT
// Output: SYNCED, WROTE, SEEN <value> (exit 0); CLOSED <code> per closed connection;
// TIMEOUT and exit 3 after 30 s.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

const [url, room, token, writeKey, waitKey] = process.argv.slice(2)
const doc = new Y.Doc()
const params = token ? { token } : {}
const provider = new WebsocketProvider(url, room, doc, { WebSocketPolyfill: WebSocket, params, disableBc: true })
const deadline = setTimeout(() => { console.log('TIMEOUT'); process.exit(3) }, 30000)
const probe = doc.getMap('probe')
let wrote = false
let seen = false

const check = () => {
  if (seen || !probe.has(waitKey)) return
  seen = true
  console.log('SEEN ' + probe.get(waitKey))
  clearTimeout(deadline)
  // stay long enough for our own write to be delivered before leaving
  setTimeout(() => { provider.destroy(); process.exit(0) }, 300)
}
provider.on('connection-close', (event) => { if (event) console.log('CLOSED ' + event.code) })
provider.on('sync', (synced) => {
  if (!synced || wrote) return
  wrote = true
  console.log('SYNCED')
  probe.set(writeKey, 'from-' + writeKey)
  console.log('WROTE')
  check()
})
probe.observe(check)
