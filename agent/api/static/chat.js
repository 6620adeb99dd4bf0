// The chat page: questions about any incident the token may see.

import { fail, start } from "/static/console.js";
import { chatBox } from "/static/answer.js";

start("chat").then((who) => {
  document.querySelector("[data-testid=chat-page]").replaceChildren(chatBox(who));
  document.querySelector("[data-testid=chat-question]").focus();
}).catch(fail);
