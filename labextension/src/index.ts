/**
 * Confidential Python's attestation indicator: the verdict of the active notebook's kernel, shown in the
 * status bar (JupyterLab) or the notebook toolbar (Notebook 7), where no cell output can draw.
 *
 * Trust: the state comes only from the kernel process of Confidential Python (implementation "cc_kernel"),
 * never from cell output. It reads
 *   - IOPub `display_data` / `update_display_data` messages carrying the badge's MIME type with the badge's
 *     display id: the kernel process publishes them (on every state change and after every
 *     `kernel_info_request`) and drops enclave output that uses that MIME type or display id;
 *   - `kernel_info_reply.cc_kernel.badge`, the same content, when the indicator attaches to a kernel.
 * Messages of any other kernel are ignored (a stock kernel forwards whatever a cell displays), so for another
 * kernel the indicator shows nothing. Outputs are never read: clearing or re-running cells changes nothing.
 */

import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { IStatusBar } from '@jupyterlab/statusbar';
import { ISignal, Signal } from '@lumino/signaling';
import { Widget } from '@lumino/widgets';

/** The badge's MIME type and display-id prefix (cc_kernel/kernel/badge.py). */
export const BADGE_MIME = 'application/vnd.cc-kernel.attestation.v1+json';
export const DISPLAY_ID_PREFIX = 'cc-kernel-attestation-';
/** `kernel_info_reply.implementation` of Confidential Python. */
export const IMPLEMENTATION = 'cc_kernel';

/** The badge's machine-readable content (`badge.machine` in the kernel). */
export interface IBadge {
  state: string;
  headline: string;
  session_id: string;
  mode: string;
  as_of: string;
  audit_log: string;
  failures: string[];
  detail: string;
  summary: string[];
  result: unknown;
}

/** state -> [background, border/text colour, words]: the badge's colours and words. */
const STYLES: { [state: string]: [string, string, string] } = {
  pending: ['#eceff1', '#455a64', 'Attesting the enclave…'],
  affirming: ['#e8f5e9', '#1b5e20', 'VERIFIED TEE hardware'],
  warning: ['#fff3e0', '#8a4b00', 'VERIFIED with accepted weakenings'],
  simulation: ['#fff8e1', '#b26a00', 'SIMULATION — not hardware-protected'],
  refused: ['#ffebee', '#b71c1c', 'ATTESTATION REFUSED'],
  stopped: ['#ffebee', '#b71c1c', 'ENCLAVE STOPPED'],
  // Local states: the kernel process itself is restarting or gone.
  restarting: ['#eceff1', '#455a64', 'Kernel restarting — attestation pending'],
  dead: ['#ffebee', '#b71c1c', 'ENCLAVE STOPPED — the kernel is dead']
};

const KERNEL_STATES = ['pending', 'affirming', 'warning', 'simulation', 'refused', 'stopped'];

/** The badge content of an IOPub message, or null if the message is not the kernel's badge. */
export function badgeOf(msg: KernelMessage.IIOPubMessage): IBadge | null {
  const type = msg.header.msg_type;
  if (type !== 'display_data' && type !== 'update_display_data') {
    return null;
  }
  const content = msg.content as {
    data?: { [mime: string]: unknown };
    transient?: { display_id?: unknown };
  };
  const data = content.data;
  if (!data || !Object.prototype.hasOwnProperty.call(data, BADGE_MIME)) {
    return null;
  }
  const displayId = content.transient?.display_id;
  const badge = asBadge(data[BADGE_MIME]);
  if (badge === null || displayId !== DISPLAY_ID_PREFIX + badge.session_id) {
    return null;
  }
  return badge;
}

/** Check the shape of a badge's content; null if it is not one. */
export function asBadge(value: unknown): IBadge | null {
  if (typeof value !== 'object' || value === null) {
    return null;
  }
  const b = value as Partial<IBadge>;
  if (typeof b.state !== 'string' || !KERNEL_STATES.includes(b.state)) {
    return null;
  }
  if (typeof b.session_id !== 'string' || !b.session_id) {
    return null;
  }
  return {
    state: b.state,
    headline: String(b.headline ?? STYLES[b.state][2]),
    session_id: b.session_id,
    mode: String(b.mode ?? ''),
    as_of: String(b.as_of ?? ''),
    audit_log: String(b.audit_log ?? ''),
    failures: Array.isArray(b.failures) ? b.failures.map(String) : [],
    detail: String(b.detail ?? ''),
    summary: Array.isArray(b.summary) ? b.summary.map(String) : [],
    result: b.result ?? null
  };
}

/**
 * The attestation state of one kernel connection, as the trusted kernel process reported it.
 * `state` is null while the kernel is not known to be Confidential Python (the indicator is hidden).
 */
export class AttestationModel {
  get changed(): ISignal<this, void> {
    return this._changed;
  }

  /** One of STYLES' keys, or null: nothing to show. */
  get state(): string | null {
    if (this._ours !== true) {
      return null;
    }
    if (this._local !== null) {
      return this._local;
    }
    return this._badge?.state ?? 'pending';
  }

  get badge(): IBadge | null {
    return this._badge;
  }

  get kernel(): Kernel.IKernelConnection | null {
    return this._kernel;
  }

  setKernel(kernel: Kernel.IKernelConnection | null): void {
    if (kernel === this._kernel) {
      return;
    }
    if (this._kernel !== null) {
      this._kernel.iopubMessage.disconnect(this._onIopub, this);
      this._kernel.statusChanged.disconnect(this._onStatus, this);
    }
    this._kernel = kernel;
    this._ours = null;
    this._badge = null;
    this._pending = null;
    this._local = null;
    if (kernel !== null) {
      kernel.iopubMessage.connect(this._onIopub, this);
      kernel.statusChanged.connect(this._onStatus, this);
      void this._identify(kernel);
    }
    this._changed.emit();
  }

  dispose(): void {
    this.setKernel(null);
    Signal.clearData(this);
  }

  private async _identify(kernel: Kernel.IKernelConnection): Promise<void> {
    let info: KernelMessage.IInfoReply | undefined;
    try {
      info = await kernel.info; // the first kernel_info_reply of this connection
    } catch {
      info = undefined;
    }
    if (kernel !== this._kernel || info === undefined) {
      return;
    }
    const content = info as { implementation?: unknown; cc_kernel?: { badge?: unknown } };
    this._ours = content.implementation === IMPLEMENTATION && typeof content.cc_kernel === 'object';
    if (this._ours) {
      // IOPub may have brought a newer state while the reply travelled: it wins.
      this._badge = this._pending ?? this._badge ?? asBadge(content.cc_kernel?.badge);
      // That reply may be older than this indicator (the kernel may have restarted since): ask again; the
      // kernel answers every kernel_info_request with its current state on IOPub.
      kernel.requestKernelInfo().catch(() => undefined);
    }
    this._pending = null;
    this._changed.emit();
  }

  private _onIopub(kernel: Kernel.IKernelConnection, msg: KernelMessage.IIOPubMessage): void {
    const badge = badgeOf(msg);
    if (badge === null) {
      return;
    }
    if (this._ours === null) {
      this._pending = badge; // applied once the kernel_info reply says the kernel is ours
      return;
    }
    if (!this._ours) {
      return;
    }
    this._badge = badge;
    this._local = null;
    this._changed.emit();
  }

  private _onStatus(kernel: Kernel.IKernelConnection, status: Kernel.Status): void {
    let local = this._local;
    if (status === 'restarting' || status === 'autorestarting') {
      this._badge = null; // the new kernel process attests a new enclave, with a new session id
      local = 'restarting';
    } else if (status === 'dead') {
      local = 'dead';
    } else if (local === 'dead') {
      local = null;
    }
    if (local !== this._local) {
      this._local = local;
      this._changed.emit();
    }
  }

  private _kernel: Kernel.IKernelConnection | null = null;
  private _ours: boolean | null = null;
  private _badge: IBadge | null = null;
  private _pending: IBadge | null = null;
  private _local: string | null = null;
  private _changed = new Signal<this, void>(this);
}

/** The claims dialog: the same text and JSON as `%attestation` (or the refusal), from the kernel's badge. */
export function showClaims(model: AttestationModel): void {
  const state = model.state ?? 'pending';
  const badge = model.badge;
  const body = new Widget();
  body.addClass('cc-kernel-Claims');
  const lines = badge ? badge.summary : [STYLES[state][2]];
  const text = document.createElement('pre');
  text.className = 'cc-kernel-Claims-summary';
  text.textContent = lines.join('\n');
  body.node.appendChild(text);
  if (badge) {
    const facts = document.createElement('pre');
    facts.className = 'cc-kernel-Claims-facts';
    const where = [`session: ${badge.session_id}`, `enclave: ${badge.mode}`, `as of: ${badge.as_of}`];
    where.push(`audit log: ${badge.audit_log || 'none'}`);
    facts.textContent = where.join('\n');
    body.node.appendChild(facts);
    if (badge.result !== null) {
      const json = document.createElement('pre');
      json.className = 'cc-kernel-Claims-json';
      json.textContent = JSON.stringify(badge.result, null, 2);
      body.node.appendChild(json);
    }
  }
  void showDialog({
    title: `Confidential Python — ${STYLES[state][2]}`,
    body,
    buttons: [Dialog.okButton({ label: 'Close' })]
  });
}

/** A small shield in the current text colour (an emoji may have no glyph in the user's fonts). */
function shield(): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 16 16');
  svg.setAttribute('width', '12');
  svg.setAttribute('height', '12');
  svg.setAttribute('aria-hidden', 'true');
  svg.classList.add('cc-kernel-Indicator-shield');
  const path = document.createElementNS(ns, 'path');
  path.setAttribute('d', 'M8 1 2 3.5v4C2 11 4.6 14 8 15c3.4-1 6-4 6-7.5v-4z');
  path.setAttribute('fill', 'currentColor');
  svg.appendChild(path);
  return svg;
}

/** The indicator: the words and colours of the model's state; a click shows the claims. */
export class AttestationIndicator extends Widget {
  constructor() {
    super({ node: document.createElement('button') });
    this.addClass('cc-kernel-Indicator');
    this.node.setAttribute('type', 'button');
    this.node.addEventListener('click', () => {
      if (this._model?.state) {
        showClaims(this._model);
      }
    });
    this.render();
  }

  get model(): AttestationModel | null {
    return this._model;
  }

  set model(model: AttestationModel | null) {
    if (model === this._model) {
      return;
    }
    this._model?.changed.disconnect(this.render, this);
    this._model = model;
    model?.changed.connect(this.render, this);
    this.render();
  }

  get stateChanged(): ISignal<this, void> {
    return this._stateChanged;
  }

  render(): void {
    const state = this._model?.state ?? null;
    const node = this.node;
    if (state === null) {
      node.dataset.ccState = 'none';
      node.textContent = '';
      node.title = '';
      node.style.display = 'none';
      this._stateChanged.emit();
      return;
    }
    const [background, colour, words] = STYLES[state] ?? STYLES.pending;
    const badge = this._model?.badge ?? null;
    let text = words;
    if (state === 'refused' && badge) {
      const reason = badge.failures[0] || badge.detail;
      if (reason) {
        text = `${words}: ${reason}`;
      }
    }
    node.dataset.ccState = state;
    node.dataset.ccSession = badge?.session_id ?? '';
    node.style.display = '';
    node.style.background = background;
    node.style.color = colour;
    node.style.borderColor = colour;
    node.replaceChildren(shield(), document.createTextNode(text));
    node.title = [`Confidential Python: ${text}`, ...(badge?.summary ?? []), '', 'Click for the full claims.'].join(
      '\n'
    );
    this._stateChanged.emit();
  }

  dispose(): void {
    this.model = null;
    super.dispose();
  }

  private _model: AttestationModel | null = null;
  private _stateChanged = new Signal<this, void>(this);
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'cc-kernel-indicator:plugin',
  description: "The attestation state of the active notebook's Confidential Python kernel.",
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, statusBar: IStatusBar | null) => {
    const models = new Map<NotebookPanel, AttestationModel>();
    const modelOf = (panel: NotebookPanel): AttestationModel => {
      let model = models.get(panel);
      if (model === undefined) {
        const created = new AttestationModel();
        models.set(panel, created);
        const follow = () => created.setKernel(panel.sessionContext.session?.kernel ?? null);
        panel.sessionContext.kernelChanged.connect(follow);
        follow();
        panel.disposed.connect(() => {
          models.delete(panel);
          created.dispose();
        });
        model = created;
      }
      return model;
    };

    // JupyterLab: one item in the status bar, following the active notebook. Notebook 7 shows no status
    // bar: there, each notebook's toolbar gets its own indicator.
    if (statusBar !== null && app.name === 'JupyterLab') {
      const item = new AttestationIndicator();
      item.id = 'cc-kernel-attestation-indicator';
      const follow = () => {
        const panel = tracker.currentWidget;
        item.model = panel ? modelOf(panel) : null;
      };
      tracker.currentChanged.connect(follow);
      follow();
      statusBar.registerStatusItem('cc-kernel-indicator:status', {
        item,
        align: 'left',
        rank: 5,
        isActive: () => item.model?.state != null,
        activeStateChanged: item.stateChanged
      });
    } else {
      tracker.widgetAdded.connect((_, panel) => {
        const item = new AttestationIndicator();
        item.model = modelOf(panel);
        panel.toolbar.insertItem(10, 'cc-kernel-attestation', item);
      });
    }
  }
};

export default plugin;
