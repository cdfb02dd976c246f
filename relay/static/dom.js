// Small pieces of page the views share.

/** A table row of `cellTag` ("td" or "th") cells holding `cells` as text. */
export function tableRow(cellTag, cells) {
  const tr = document.createElement("tr");
  for (const text of cells) {
    const cell = document.createElement(cellTag);
    cell.textContent = text;
    tr.append(cell);
  }
  return tr;
}

/** A table's head and body: one header row and rows of cells. */
export function tableParts(header, rows) {
  const thead = document.createElement("thead");
  thead.append(tableRow("th", header));
  const tbody = document.createElement("tbody");
  tbody.append(...rows);
  return [thead, tbody];
}

/** A short line in a line's colour, as legends show it. */
export function swatch(color) {
  const element = document.createElement("span");
  element.className = "swatch";
  element.style.borderColor = color;
  return element;
}
