// hub web page: small progressive enhancements; every page works without this file.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  // The sort menu applies at once.
  for (const select of document.querySelectorAll("select[data-autosubmit]")) {
    select.addEventListener("change", () => select.form.submit());
  }
  // "Compare selected" needs two adapters or more.
  const compare = document.getElementById("compare-form");
  if (compare) {
    const button = document.getElementById("compare-selected");
    const update = () => {
      button.disabled = compare.querySelectorAll("input[name=ref]:checked").length < 2;
    };
    compare.addEventListener("change", update);
    update();
  }
  // Copy buttons of the snippets.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const text = document.getElementById(button.dataset.copy).innerText;
      try {
        await navigator.clipboard.writeText(text);
        button.textContent = "Copied";
      } catch (error) {
        button.textContent = "Select and copy";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 1500);
    });
  }
});
