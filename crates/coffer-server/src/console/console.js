// The console's one script (the CSP allows no inline script): times in
// the viewer's time zone, the UTC value kept in the title for hover.
document.querySelectorAll("time[datetime]").forEach(function (el) {
  var at = new Date(el.getAttribute("datetime"));
  if (!isNaN(at)) {
    el.textContent = at.toLocaleString();
  }
});
