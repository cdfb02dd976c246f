// How the page orders, groups and scales metrics it discovers in a run's messages.
//
// The protocol's metric_names come first, in their order. Every other metric falls in a group
// by the prefix of its name (val_, train_, test_ and the client mod's sys_ figures) or, with no
// such prefix, in the group of other metrics; within a group, names follow the protocol's order
// of their bare name, then natural order. So the order is the same on every reload and for
// every run of a comparison.

import { FRACTION_METRICS, METRICS } from "./protocol.js";
import { naturalCompare } from "./values.js";

/** The prefix of the client mod's system figures (sys_wall_time, sys_peak_rss_mb, ...). */
const SYSTEM_PREFIX = "sys_";
/** Groups of metrics by name prefix, in page order, after the protocol's and the others. */
const GROUP_PREFIXES = ["val_", "train_", "test_", SYSTEM_PREFIX];
/** The group of the protocol's metric_names. */
export const MAIN_GROUP = "main";
/** The group of metrics with no known prefix (dice, train-time, ...). */
const OTHER_GROUP = "other";
const GROUP_ORDER = [MAIN_GROUP, OTHER_GROUP, ...GROUP_PREFIXES];
// Words in a metric's name that say it is a rate or score, so that its values in [0, 1] get
// the fixed [0, 1] axis of the protocol's fraction metrics: val_accuracy (a fraction metric's
// name inside), dice, iou, roc_auc, top5_acc, error_rate, ...
const RATE_WORDS = ["acc", "auc", "dice", "iou", "jaccard", "rate", "ratio", "score"];

/** The group a metric belongs to: MAIN_GROUP, OTHER_GROUP or one of GROUP_PREFIXES. */
export function metricGroup(name) {
  if (METRICS.includes(name)) return MAIN_GROUP;
  return GROUP_PREFIXES.find((prefix) => name.startsWith(prefix)) ?? OTHER_GROUP;
}

/** A group's place on the page: main, other, then the prefixes. */
export function groupRank(group) {
  return GROUP_ORDER.indexOf(group);
}

/** How a group is titled on the page. */
export function groupTitle(group) {
  if (group === MAIN_GROUP) return "metrics";
  if (group === OTHER_GROUP) return "other metrics";
  return `${group}*`;
}

/** Page order of metric names (see the top of this module). */
export function compareMetrics(a, b) {
  const groupA = metricGroup(a);
  const groupB = metricGroup(b);
  if (groupA !== groupB) return groupRank(groupA) - groupRank(groupB);
  const rank = (name) => {
    const bare = groupA === MAIN_GROUP || groupA === OTHER_GROUP ? name : name.slice(groupA.length);
    const index = METRICS.indexOf(bare);
    return index < 0 ? METRICS.length : index;
  };
  return rank(a) - rank(b) || naturalCompare(a, b);
}

/** Whether a metric is one of the client mod's system figures. */
export function isSystem(name) {
  return name.startsWith(SYSTEM_PREFIX);
}

/**
 * Whether a metric's chart gets the fixed [0, 1] axis: the protocol's fraction metrics, and a
 * metric whose name holds a fraction metric's name or a rate word and whose values so far
 * (`low`..`high`, finite ones) all lie in [0, 1].
 */
export function isBounded(name, low, high) {
  if (FRACTION_METRICS.has(name)) return true;
  const lowered = name.toLowerCase();
  const words = [...FRACTION_METRICS, ...RATE_WORDS];
  return low >= 0 && high <= 1 && words.some((word) => lowered.includes(word));
}
