// The live board: a Yjs client in the browser that syncs the replica's room over the same
// websocket that serves this page, and draws its tasks, graph, counters, presence and
// conflicts (layout: docs/schema.md; this page: docs/board.md). Built into ../board.js by
// `make board` (esbuild); nothing is fetched at run time.
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import { Awareness } from 'y-protocols/awareness'
import { digest } from 'lib0/hash/sha256'

export const STATUSES = ['pending', 'in_progress', 'blocked', 'completed', 'cancelled']
export const PRIORITIES = ['low', 'medium', 'high', 'critical']
const PRIORITY_RANK = { critical: 0, high: 1, medium: 2, low: 3 }
const MAX_GRAPH_NODES = 300
const MAX_SAFE = 2 ** 53

// ---- reading the document (ports of replica/*.py readers) ------------------------------

const plain = (value) => {
  if (value instanceof Y.Map) return Object.fromEntries([...value.entries()].map(([k, v]) => [k, plain(v)]))
  if (value instanceof Y.Array) return value.toArray().map(plain)
  return value
}

const setMembers = (value) => {
  if (value instanceof Y.Map) return [...value.keys()].sort()
  if (Array.isArray(value)) return value.filter((v) => typeof v === 'string')
  return []
}

/** Valid tasks (a record that is not a map or lacks a title is skipped, as replica listings do). */
export function readTasks (doc) {
  const out = []
  for (const [id, entry] of doc.getMap('tasks').entries()) {
    if (!(entry instanceof Y.Map)) continue
    const title = entry.get('title')
    const status = entry.get('status')
    if (typeof title !== 'string' || !title || !STATUSES.includes(status)) continue
    const priority = PRIORITIES.includes(entry.get('priority')) ? entry.get('priority') : 'medium'
    const owner = typeof entry.get('owner') === 'string' ? entry.get('owner') : null
    out.push({ id, title, status, priority, owner, tags: setMembers(entry.get('tags')),
      created_at: String(entry.get('created_at') || ''), updated_at: String(entry.get('updated_at') || '') })
  }
  out.sort((a, b) => (PRIORITY_RANK[a.priority] - PRIORITY_RANK[b.priority]) ||
    (a.created_at < b.created_at ? -1 : a.created_at > b.created_at ? 1 : 0) || (a.id < b.id ? -1 : 1))
  return out
}

/** A counter slot amount (replica/counters.py slot_value): a non-negative integer number or decimal string. */
function slotValue (raw) {
  if (typeof raw === 'number' && Number.isInteger(raw) && raw >= 0 && raw <= MAX_SAFE) return BigInt(raw)
  if (typeof raw === 'string' && /^[0-9]{1,40}$/.test(raw)) return BigInt(raw)
  return null
}

/** Counter name -> exact value (a BigInt): the sum of p - n over its `name|owner` slots; junk slots count as nothing. */
export function readCounters (doc) {
  const totals = new Map()
  for (const [key, raw] of doc.getMap('counters').entries()) {
    const cut = key.indexOf('|')
    if (cut < 1 || !/^[0-9]+$/.test(key.slice(cut + 1))) continue
    const slot = raw instanceof Y.Map ? plain(raw) : raw
    if (slot === null || typeof slot !== 'object' || Array.isArray(slot)) continue
    const p = slotValue(slot.p ?? 0)
    const n = slotValue(slot.n ?? 0)
    if (p === null || n === null) continue
    const name = key.slice(0, cut)
    totals.set(name, (totals.get(name) ?? 0n) + p - n)
  }
  return [...totals.entries()].sort(([a], [b]) => (a < b ? -1 : 1))
}

/** Task id -> the live claim holder (replica/claims.py winner: highest epoch, arbitrated, earlier, smaller key). */
export function readClaims (doc, nowSeconds) {
  const best = new Map()
  for (const [fullKey, raw] of doc.getMap('claims').entries()) {
    const cut = fullKey.indexOf('|')
    if (cut < 1 || raw === null || typeof raw !== 'object') continue
    const taskId = fullKey.slice(0, cut)
    const key = fullKey.slice(cut + 1)
    const epoch = Math.trunc(Number(raw.epoch))
    const expires = Number(raw.expires)
    const at = Number(raw.at)
    if (raw.agent === undefined || raw.agent === null || !Number.isFinite(epoch) || !Number.isFinite(expires) || !Number.isFinite(at)) continue
    const claim = { agent: String(raw.agent), epoch, expires, at, tentative: Boolean(raw.tentative), ended: raw.ended ?? null, key }
    const current = best.get(taskId)
    if (current === undefined || claimBefore(claim, current)) best.set(taskId, claim)
  }
  const live = new Map()
  for (const [taskId, claim] of best) {
    if (claim.ended === null && claim.expires > nowSeconds) live.set(taskId, claim)
  }
  return live
}

function claimBefore (a, b) {
  if (a.epoch !== b.epoch) return a.epoch > b.epoch
  if (a.tentative !== b.tentative) return !a.tentative
  if (a.at !== b.at) return a.at < b.at
  return a.key < b.key
}

/** Nodes and edges (edges whose ends are missing are kept out of the drawing, as readers never follow them). */
export function readGraph (doc) {
  const nodes = []
  for (const [id, entry] of doc.getMap('nodes').entries()) {
    if (!(entry instanceof Y.Map)) continue
    nodes.push({ id, type: String(entry.get('type') || ''), content: String(entry.get('content') || '') })
  }
  nodes.sort((a, b) => (a.id < b.id ? -1 : 1))
  const known = new Set(nodes.map((n) => n.id))
  const edges = []
  for (const [key, entry] of doc.getMap('edges').entries()) {
    if (!(entry instanceof Y.Map)) continue
    const [source, type, target] = key.split('|')
    if (known.has(source) && known.has(target)) edges.push({ key, source, target, type: type || '', weight: Number(entry.get('weight') ?? 1) })
  }
  return { nodes, edges }
}

// ---- conflicts: a port of replica/history.py's detection rule ---------------------------

const canonical = (value) => {
  if (Array.isArray(value)) return '[' + value.map(canonical).join(',') + ']'
  if (value !== null && typeof value === 'object') {
    return '{' + Object.keys(value).sort().map((k) => JSON.stringify(k) + ':' + canonical(value[k])).join(',') + '}'
  }
  return JSON.stringify(value ?? null)
}
const sameValue = (a, b) => canonical(a) === canonical(b)
const seqText = (seq) => String(seq)

/** A stored write record (WriteRecord.parse), or null for anything malformed. */
function parseWrite (key, raw) {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return null
  if (raw.clock === null || typeof raw.clock !== 'object' || raw.record === undefined || raw.writer === undefined) return null
  const seq = Math.trunc(Number(raw.seq))
  if (!Number.isFinite(seq)) return null
  const clock = {}
  for (const [writer, value] of Object.entries(raw.clock)) {
    const n = Math.trunc(Number(value))
    if (!Number.isFinite(n)) return null
    clock[writer] = n
  }
  const data = raw.data ?? null
  if (data !== null && (typeof data !== 'object' || Array.isArray(data))) return null
  let fields = raw.fields ?? {}
  if (Array.isArray(fields)) {
    if (!fields.every((f) => typeof f === 'string')) return null
    fields = data === null ? {} : Object.fromEntries(fields.filter((f) => f in data).map((f) => [f, data[f]]))
  } else if (typeof fields !== 'object' || fields === null) {
    return null
  }
  const resolves = Array.isArray(raw.resolves) ? raw.resolves.map(String) : []
  return { key, record: String(raw.record), writer: String(raw.writer), seq, clock, fields, deleted: data === null, resolves }
}

const dominates = (a, b) => (a.clock[b.writer] ?? 0) >= b.seq

const hex = (bytes) => [...bytes].map((b) => b.toString(16).padStart(2, '0')).join('')

/** The conflict id every replica gives two write records (history.py conflict_id). */
export function conflictId (recordId, a, b) {
  const [first, second] = [a, b].sort()
  return 'C-' + hex(digest(new TextEncoder().encode(`${recordId}\u0000${first}\u0000${second}`))).slice(0, 16)
}

function pair (recordId, a, b) {
  if (a.writer === b.writer || dominates(a, b) || dominates(b, a)) return null
  if (a.resolves.some((id) => b.resolves.includes(id))) return null
  let fields
  if (a.deleted !== b.deleted) {
    fields = [...new Set([...Object.keys(a.fields), ...Object.keys(b.fields), '__deleted__'])].sort()
  } else {
    fields = Object.keys(a.fields).filter((f) => f in b.fields && !sameValue(a.fields[f], b.fields[f])).sort()
  }
  if (fields.length === 0) return null
  const [left, right] = [a, b].sort((x, y) => (x.key < y.key ? -1 : 1))
  return { id: conflictId(recordId, left.key, right.key), record: recordId, fields, left, right }
}

function settled (conflict, history) {
  for (const write of history) {
    if (!dominates(write, conflict.left) || !dominates(write, conflict.right)) continue
    if (write.resolves.includes(conflict.id)) return true
    if (!conflict.fields.includes('__deleted__') && conflict.fields.every((f) => f in write.fields)) return true
  }
  return false
}

/** Open task conflicts: pairs of concurrent write records of different writers that set a field to different values. */
export function readConflicts (doc) {
  // Only a record that more than one writer wrote can hold a conflict; its keys (record|writer,
  // or record|writer|seq in the flat layout) say so before any write record is parsed.
  const keysByRecord = new Map()
  for (const [key, value] of doc.getMap('tasks_writes').entries()) {
    const [recordId, writer = ''] = key.split('|', 2)
    if (!keysByRecord.has(recordId)) keysByRecord.set(recordId, { writers: new Set(), entries: [] })
    const entry = keysByRecord.get(recordId)
    entry.writers.add(writer)
    entry.entries.push([key, value])
  }
  const byRecord = new Map()
  for (const [recordId, { writers, entries }] of keysByRecord) {
    if (writers.size < 2) continue
    for (const [key, value] of entries) {
      const items = value instanceof Y.Array
        ? value.toArray().map((item) => [`${key}|${seqText(item && item.seq)}`, item])
        : [[key, plain(value)]]
      for (const [itemKey, raw] of items) {
        const write = parseWrite(itemKey, raw)
        if (write === null) continue
        if (!byRecord.has(recordId)) byRecord.set(recordId, [])
        byRecord.get(recordId).push(write)
      }
    }
  }
  const found = []
  for (const [recordId, history] of byRecord) {
    if (new Set(history.map((w) => w.writer)).size < 2) continue
    for (let i = 0; i < history.length; i++) {
      for (let j = i + 1; j < history.length; j++) {
        const conflict = pair(recordId, history[i], history[j])
        if (conflict !== null && !settled(conflict, history)) found.push(conflict)
      }
    }
  }
  found.sort((a, b) => (a.record < b.record ? -1 : a.record > b.record ? 1 : a.id < b.id ? -1 : 1))
  return found
}

/** Who is online: every other awareness state (replicas, agents, other Yjs clients). */
export function readOnline (awareness) {
  const out = []
  for (const [clientId, state] of awareness.getStates()) {
    if (clientId === awareness.clientID || state === null || typeof state !== 'object') continue
    const name = state.agent || state.name || state.replica_id || `client ${clientId}`
    out.push({ clientId, name: String(name), working_on: state.working_on ? String(state.working_on) : '',
      replica: state.replica_id ? String(state.replica_id) : '', kind: state.kind ? String(state.kind) : '' })
  }
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : a.clientId - b.clientId))
  return out
}

// ---- writing (the same field layout replica/tasks.py writes; no write records) -----------

/** Python's isoformat() of a UTC time, as the replica stores timestamps. */
export const isoNow = () => new Date().toISOString().replace('Z', '000+00:00')

function newTaskId () {
  const now = new Date().toISOString()
  const stamp = now.slice(0, 10).replaceAll('-', '') + '-' + now.slice(11, 19).replaceAll(':', '')
  const random = hex(crypto.getRandomValues(new Uint8Array(4)))
  return `T-${stamp}-${random}`
}

/** Create a task with every field the Python side writes; returns its id. */
export function addTask (doc, { title, priority = 'medium', status = 'pending' }, createdBy) {
  const clean = String(title).trim()
  if (!clean || clean.length > 1000) throw new Error('a title is 1-1000 characters')
  if (!PRIORITIES.includes(priority)) throw new Error(`priority must be one of ${PRIORITIES.join(', ')}`)
  if (!STATUSES.includes(status)) throw new Error(`status must be one of ${STATUSES.join(', ')}`)
  const id = newTaskId()
  const now = isoNow()
  doc.transact(() => {
    const task = new Y.Map()
    doc.getMap('tasks').set(id, task)
    task.set('title', clean)
    task.set('description', '')
    task.set('status', status)
    task.set('priority', priority)
    task.set('owner', null)
    task.set('created_at', now)
    task.set('updated_at', now)
    task.set('created_by', createdBy)
    task.set('tags', new Y.Map())
    task.set('depends_on', new Y.Map())
    task.set('properties', new Y.Map())
  })
  return id
}

/** Set a task's status (and `updated_at`, as every update does). */
export function setStatus (doc, taskId, status) {
  if (!STATUSES.includes(status)) throw new Error(`status must be one of ${STATUSES.join(', ')}`)
  const task = doc.getMap('tasks').get(taskId)
  if (!(task instanceof Y.Map)) throw new Error(`no task ${taskId}`)
  doc.transact(() => {
    task.set('status', status)
    task.set('updated_at', isoNow())
  })
}

// ---- drawing (DOM built with textContent only: peers' text is never parsed as HTML) ------

const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) {
    if (name === 'text') node.textContent = value
    else if (value !== undefined && value !== null && value !== false) node.setAttribute(name, value === true ? '' : String(value))
  }
  for (const child of children) if (child) node.append(child)
  return node
}
const SVG = 'http://www.w3.org/2000/svg'
const svg = (tag, attrs = {}) => {
  const node = document.createElementNS(SVG, tag)
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value))
  return node
}

const leaseText = (expires, nowSeconds) => {
  const left = Math.max(0, Math.round(expires - nowSeconds))
  const when = new Date(expires * 1000).toISOString().slice(11, 19) + 'Z'
  return left >= 3600 ? `until ${when} (${Math.floor(left / 3600)}h${Math.floor((left % 3600) / 60)}m)`
    : `until ${when} (${Math.floor(left / 60)}m${left % 60}s)`
}

function taskCard (task, claim, conflicts, board) {
  const card = el('article', { class: 'card' + (conflicts.length ? ' conflicted' : ''), 'data-task-id': task.id, 'data-status': task.status })
  card.append(el('h3', { text: task.title }))
  card.append(el('div', { class: 'meta' },
    el('span', { class: `priority p-${task.priority}`, text: task.priority }),
    el('span', { class: 'id', text: task.id, title: task.id })))
  if (task.owner) card.append(el('div', { class: 'owner', text: `owner: ${task.owner}` }))
  if (claim) card.append(el('div', { class: 'claim' + (claim.tentative ? ' tentative' : ''), text: `claimed by ${claim.agent} (epoch ${claim.epoch}) ${leaseText(claim.expires, board.now())}` }))
  if (task.tags.length) card.append(el('div', { class: 'tags' }, ...task.tags.map((t) => el('span', { class: 'tag', text: t }))))
  if (conflicts.length) {
    const fields = [...new Set(conflicts.flatMap((c) => c.fields))].join(', ')
    card.append(el('div', { class: 'conflict-note', text: `conflict on ${fields}` }))
  }
  const select = el('select', { class: 'status-select', 'aria-label': `status of ${task.id}`, disabled: !board.canWrite })
  for (const status of STATUSES) select.append(el('option', { value: status, selected: status === task.status, text: status.replace('_', ' ') }))
  select.addEventListener('change', () => board.write(() => setStatus(board.doc, task.id, select.value)))
  card.append(select)
  return card
}

/** Redraw the columns, reusing the card of every task whose shown state did not change. */
function drawColumns (target, tasks, claims, conflictsByTask, board) {
  const now = board.now()
  const kept = new Map()
  const columns = new Map(STATUSES.map((status) => [status, []]))
  for (const task of tasks) {
    const claim = claims.get(task.id)
    const conflicts = conflictsByTask.get(task.id) || []
    const signature = JSON.stringify([task, claim ? [claim.agent, claim.epoch, claim.tentative, leaseText(claim.expires, now)] : null,
      conflicts.map((c) => c.fields), board.canWrite])
    const cached = board.cards.get(task.id)
    const card = cached && cached.signature === signature ? cached.card : taskCard(task, claim, conflicts, board)
    kept.set(task.id, { signature, card })
    columns.get(task.status).push(card)
  }
  board.cards = kept
  if (!board.columns) {
    board.columns = new Map(STATUSES.map((status) => {
      const heading = el('h2')
      const body = el('div', { class: 'cards' })
      return [status, { section: el('section', { class: 'column', 'data-column': status }, heading, body), heading, body }]
    }))
    target.replaceChildren(el('div', { class: 'columns' }, ...[...board.columns.values()].map((c) => c.section)))
  }
  for (const [status, cards] of columns) {
    const column = board.columns.get(status)
    column.heading.textContent = `${status.replace('_', ' ')} (${cards.length})`
    const current = [...column.body.children]
    if (current.length !== cards.length || current.some((node, i) => node !== cards[i])) column.body.replaceChildren(...cards)
  }
}

function drawGraph (target, graph) {
  const shown = graph.nodes.slice(0, MAX_GRAPH_NODES)
  if (shown.length === 0) {
    target.replaceChildren(el('p', { class: 'empty', text: 'no nodes' }))
    return
  }
  const size = 440
  const radius = shown.length === 1 ? 0 : size / 2 - 70
  const place = new Map(shown.map((node, i) => {
    const angle = (2 * Math.PI * i) / shown.length - Math.PI / 2
    return [node.id, { x: size / 2 + radius * Math.cos(angle), y: size / 2 + radius * Math.sin(angle) }]
  }))
  const picture = svg('svg', { viewBox: `0 0 ${size} ${size}`, class: 'graph', role: 'img' })
  picture.append(Object.assign(svg('title'), { textContent: `${shown.length} nodes, ${graph.edges.length} edges` }))
  const defs = svg('defs')
  const marker = svg('marker', { id: 'arrow', viewBox: '0 0 10 10', refX: 18, refY: 5, markerWidth: 6, markerHeight: 6, orient: 'auto-start-reverse' })
  marker.append(svg('path', { d: 'M 0 0 L 10 5 L 0 10 z', class: 'arrowhead' }))
  defs.append(marker)
  picture.append(defs)
  for (const edge of graph.edges) {
    const a = place.get(edge.source)
    const b = place.get(edge.target)
    if (!a || !b) continue
    const line = svg('line', { x1: a.x, y1: a.y, x2: b.x, y2: b.y, class: 'edge', 'marker-end': 'url(#arrow)', 'data-edge': edge.key })
    line.append(Object.assign(svg('title'), { textContent: `${edge.source} ${edge.type} ${edge.target} (weight ${edge.weight})` }))
    picture.append(line)
    const label = svg('text', { x: (a.x + b.x) / 2, y: (a.y + b.y) / 2 - 3, class: 'edge-label' })
    label.textContent = edge.type
    picture.append(label)
  }
  for (const node of shown) {
    const at = place.get(node.id)
    const group = svg('g', { class: `node t-${node.type.replace(/[^A-Za-z0-9_-]/g, '')}`, 'data-node-id': node.id })
    group.append(svg('circle', { cx: at.x, cy: at.y, r: 11 }))
    const label = svg('text', { x: at.x, y: at.y + 25, class: 'node-label' })
    label.textContent = node.id.length > 18 ? node.id.slice(0, 17) + '…' : node.id
    group.append(label)
    group.append(Object.assign(svg('title'), { textContent: `${node.id} (${node.type}) ${node.content}` }))
    picture.append(group)
  }
  const parts = [picture]
  if (graph.nodes.length > shown.length) parts.push(el('p', { class: 'empty', text: `showing ${shown.length} of ${graph.nodes.length} nodes` }))
  target.replaceChildren(...parts)
}

function drawList (target, rows, empty) {
  target.replaceChildren(rows.length ? el('ul', {}, ...rows) : el('p', { class: 'empty', text: empty }))
}

// ---- the page ----------------------------------------------------------------------------

function readConfig () {
  const node = document.getElementById('board-config')
  return JSON.parse(node ? node.textContent : '{}')
}

/** Start the board: connect, then redraw on every document or awareness change. */
export function start () {
  const config = readConfig()
  const params = new URLSearchParams(window.location.search)
  const token = params.get('token')
  const doc = new Y.Doc()
  const awareness = new Awareness(doc)
  awareness.setLocalState(null)
  const board = {
    doc,
    awareness,
    provider: null,
    config,
    canWrite: Boolean(config.write),
    now: () => Date.now() / 1000,
    renders: 0,
    cards: new Map(),
    columns: null,
    // Direct writes, not gated by canWrite: what a page script could always do (the server refuses them on a read-only token).
    api: {
      addTask: (fields) => addTask(doc, fields, `board:${doc.clientID}`),
      setStatus: (taskId, status) => setStatus(doc, taskId, status)
    },
    write (change) {
      if (!board.canWrite) return
      try {
        change()
        setMessage('')
      } catch (error) {
        setMessage(String(error.message || error))
      }
    }
  }
  window.agentstateBoard = board
  const $ = (id) => document.getElementById(id)
  const setMessage = (text) => { $('message').textContent = text }
  $('room').textContent = config.room
  $('access').textContent = config.write ? 'read-write' : 'read-only'
  $('access').className = config.write ? 'badge rw' : 'badge ro'
  document.body.classList.toggle('read-only', !config.write)
  const form = $('add-task')
  for (const control of form.querySelectorAll('input, select, button')) control.disabled = !board.canWrite
  form.addEventListener('submit', (event) => {
    event.preventDefault()
    board.write(() => {
      addTask(doc, { title: $('new-title').value, priority: $('new-priority').value }, `board:${doc.clientID}`)
      $('new-title').value = ''
    })
  })

  // What changed since the last drawing: only those parts are read and redrawn.
  const dirty = new Set(['tasks', 'graph', 'counters', 'online'])
  let pending = false
  let conflicts = []
  const render = () => {
    pending = false
    if (dirty.has('tasks')) {
      const tasks = readTasks(doc)
      if (dirty.has('conflicts') || board.renders === 0) conflicts = readConflicts(doc)
      const byTask = new Map()
      for (const conflict of conflicts) {
        if (!byTask.has(conflict.record)) byTask.set(conflict.record, [])
        byTask.get(conflict.record).push(conflict)
      }
      drawColumns($('columns'), tasks, readClaims(doc, board.now()), byTask, board)
      drawList($('conflicts'), conflicts.map((c) =>
        el('li', { 'data-conflict': c.id }, el('span', { class: 'name', text: `${c.id} on ${c.record}` }),
          el('span', { class: 'doing', text: c.fields.join(', ') }))), 'none open')
      $('summary').textContent = `${tasks.length} tasks, ${conflicts.length} open conflicts`
    }
    if (dirty.has('graph')) drawGraph($('graph'), readGraph(doc))
    if (dirty.has('counters')) {
      drawList($('counters'), readCounters(doc).map(([name, value]) =>
        el('li', { 'data-counter': name }, el('span', { class: 'name', text: name }), el('span', { class: 'value', text: value.toString() }))), 'no counters')
    }
    if (dirty.has('online')) {
      drawList($('online'), readOnline(awareness).map((who) =>
        el('li', { 'data-client': who.clientId }, el('span', { class: 'name', text: who.name }),
          el('span', { class: 'doing', text: who.working_on || (who.kind === 'agentstate' ? 'replica' : '') }))), 'nobody else')
    }
    dirty.clear()
    board.renders++
  }
  const schedule = (...parts) => {
    for (const part of parts) dirty.add(part)
    if (!pending) {
      pending = true
      setTimeout(render, 0)
    }
  }
  doc.getMap('tasks').observeDeep(() => schedule('tasks'))
  doc.getMap('claims').observe(() => schedule('tasks'))
  doc.getMap('tasks_writes').observeDeep(() => schedule('tasks', 'conflicts'))
  doc.getMap('nodes').observeDeep(() => schedule('graph'))
  doc.getMap('edges').observeDeep(() => schedule('graph'))
  doc.getMap('counters').observe(() => schedule('counters'))
  awareness.on('change', () => schedule('online'))
  setInterval(() => schedule('tasks'), 5000) // lease countdowns and expiries move with time alone
  render()

  if (!config.allowed) {
    $('status').textContent = 'not connected: ' + (token ? 'this token is not accepted' : 'this server needs ?token=')
    return board
  }
  const scheme = window.location.protocol === 'https:' ? 'wss:' : 'ws:'
  const provider = new WebsocketProvider(`${scheme}//${window.location.host}`, config.room, doc, {
    awareness, params: token ? { token } : {}, disableBc: true
  })
  board.provider = provider
  provider.on('status', ({ status }) => { $('status').textContent = status })
  provider.on('sync', (synced) => { if (synced) $('status').textContent = 'synced' })
  return board
}

if (typeof window !== 'undefined' && typeof document !== 'undefined') {
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start)
  else start()
}
